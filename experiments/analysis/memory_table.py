r"""Training-step memory of every WikiText-103 row, beside the paper's table, and memory against depth.

    python -m experiments.analysis.memory_table [--out=results] [--rows=all] [--time_steps=3]

Memory is read from XLA's compiled memory analysis of one training step of the model's body
(everything between the embedding and the softmax: the paper's tables exclude embeddings) at
batch 15, length 150, with a 150-long memory: the step's temporaries (activations, solver
buffers) plus the body's parameters and their gradients, in float32. Nothing is allocated:
the step is compiled from shapes only.

Then:
  * every DEQ row again with a limited Broyden history of 8 updates (the reference keeps all of
    them; `--config.model.broyden_history=8` trains that way);
  * memory against unrolled depth L = 8, 16, 32, 64 for the weight-tied DEQ-Transformer-small
    cell versus the DEQ run with L forward / L backward solver steps (full Broyden history, and
    a fixed history of 8), as a table and `<out>/memory_vs_depth.png`;
  * the forward + backward step time of the DEQ against the untied baselines at the small size,
    measured side by side (the paper reports 2.82x slower to train than an 18-layer transformer).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from experiments.analysis import plots
from experiments.analysis.paper import PAPER
from experiments.analysis.runs import load_config
from experiments.benchmarks.solver_cases import median_times
from experiments.trainer.models import abstract_model, build_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("out", "results", "Folder for the PNG plot.")
  flags.DEFINE_list("rows", ["all"], "Config names of the table rows to measure, or 'all'.")
  flags.DEFINE_integer("time_steps", 3, "Timed training steps per model for the speed comparison (0: skip).")
  flags.DEFINE_integer("batch", 15, "Batch size (the paper's memory column uses 15).")
  flags.DEFINE_integer("length", 150, "Segment length and memory length (the paper uses 150).")


ROWS = [
  "transformer_xl_small_4l",
  "transformer_xl_small_tied_16l",
  "deq_transformer_small",
  "transformer_xl_medium_16l",
  "deq_transformer_medium",
  "transformer_xl_medium_adaptive_18l",
  "deq_transformer_medium_adaptive",
  "trellisnet_70l",
  "deq_trellisnet",
]
BODY = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("cell"), nnx.PathContains("injection"), nnx.PathContains("layers")))
GB = 1e9
LIMITED_HISTORY = 8  # Broyden updates kept in the limited-memory DEQ rows


def row_config(row: str):
  return load_config("wikitext103", row)


def _body_loss(config, graphdef, body_params, rest, x, memory, probe, key):
  """<body output, probe>: a loss whose gradient flows through the whole body (one interface for every model)."""
  model = nnx.merge(graphdef, body_params, rest)
  out, *_ = model.body(x, memory, dropout_key=key, unrolled=config.execution == "unrolled")
  return jnp.sum(out.astype(jnp.float32) * probe)


def body_step(config, batch, length, model=None):
  """(jitted grad of the body loss, its abstract or concrete arguments)."""
  model = abstract_model(config) if model is None else model
  graphdef, body_params, rest = nnx.split(model, BODY, ...)
  unrolled = config.execution == "unrolled"
  shapes = lambda fn, *args: jax.eval_shape(  # fn(model, *args)'s output shapes; nothing is computed
    lambda params, rest, *args: fn(nnx.merge(graphdef, params, rest), *args), body_params, rest, *args
  )
  x = shapes(lambda m, t: m.embedding(t), jax.ShapeDtypeStruct((batch, length), jnp.int32))
  memory = shapes(lambda m: m.init_memory(batch, jnp.float32, length))
  out = shapes(lambda m, x, mem: m.body(x, mem, dropout_key=jax.random.key(0), unrolled=unrolled)[0], x, memory)
  args = (body_params, rest, x, memory, out, jax.random.key(0))
  grad = jax.jit(jax.grad(functools.partial(_body_loss, config, graphdef)))
  return grad, args


def step_memory(config, batch, length) -> dict:
  """Compiled memory of one body step: temporaries, and with the body's parameters and gradients."""
  grad, args = body_step(config, batch, length)
  analysis = grad.lower(*args).compile().memory_analysis()
  param_bytes = sum(leaf.size * 4 for leaf in jax.tree.leaves(args[0]))
  return {
    "temp": analysis.temp_size_in_bytes,
    "params": param_bytes,
    "total": analysis.temp_size_in_bytes + 2 * param_bytes,
  }


def with_depth(config, execution, depth):
  """A copy of `config` run as `execution` at depth L: L unrolled layers, or L forward and L backward solver steps."""
  config = config.copy_and_resolve_references()
  config.execution = execution
  if execution == "unrolled":
    config.model.pretrain_depth = depth
  else:
    config.model.max_iter = depth
    config.model.backward_max_iter = depth
  return config


def with_history(config, history):
  """A copy of `config` whose Broyden keeps `history` updates (None: all), as `--config.model.broyden_history`."""
  config = config.copy_and_resolve_references()
  config.model.broyden_history = history
  return config


def deq_memory(config, batch, length, history):
  """A DEQ step's memory (temporaries, parameters, gradients) with Broyden(history); None: full history."""
  return step_memory(with_history(config, history), batch, length)["total"]


def memory_table(rows, batch, length):
  """Prints each row's step memory (DEQ rows also with a limited Broyden history) and the DEQ reductions."""
  print(f"Training-step memory of the body (batch {batch}, length {length}, memory {length}; float32):")
  print(f"{'row':38s} {'execution':9s} {'temp GB':>8s} {'+params+grads':>14s} {'paper GB':>9s}")
  results = {}  # (row, Broyden history) -> total bytes; history "config" is the row's own setting

  def report(label, key, config):
    m = step_memory(config, batch, length)
    results[key] = m["total"]
    paper = PAPER["wikitext103"][config.row].memory_gb
    print(f"{label:38s} {config.execution:9s} {m['temp'] / GB:8.2f} {m['total'] / GB:14.2f} {paper:9.1f}")

  for name in rows:
    config = row_config(name)
    report(name, (name, "config"), config)
    if config.execution == "deq":
      label = f"  {name} (history {LIMITED_HISTORY})"
      report(label, (name, LIMITED_HISTORY), with_history(config, LIMITED_HISTORY))
  pairs = [
    ("deq_transformer_small", "transformer_xl_small_tied_16l"),
    ("deq_transformer_small", "transformer_xl_small_4l"),
    ("deq_transformer_medium", "transformer_xl_medium_16l"),
    ("deq_transformer_medium_adaptive", "transformer_xl_medium_adaptive_18l"),
    ("deq_trellisnet", "trellisnet_70l"),
  ]
  print("DEQ reductions (full Broyden history, as the reference / history 8):")
  for deq, base in pairs:
    if (deq, "config") in results and (base, "config") in results:
      full, short = (100 * (1 - results[(deq, h)] / results[(base, "config")]) for h in ("config", LIMITED_HISTORY))
      paper = 100 * (1 - PAPER["wikitext103"][deq].memory_gb / PAPER["wikitext103"][base].memory_gb)
      line = f"  {deq} vs {base}: {full:.1f}% / {short:.1f}% less memory (paper {paper:.1f}%"
      print(line + ")")
  if ("transformer_xl_small_tied_16l", "config") in results:
    one_layer_floor(results[("transformer_xl_small_tied_16l", "config")], batch, length)


def one_layer_floor(tied_16l_bytes, batch, length):
  """Prints the memory of ONE unrolled layer of the small cell: a floor for any method that backprops one layer.

  A DEQ step stores at least one linearised layer (for the implicit backward) and runs that
  layer's backward pass, so no DEQ (or any other one-layer-backprop method) can save more than
  1 - floor / tied-16-layer here, whatever its solver.
  """
  floor = step_memory(with_depth(row_config("deq_transformer_small"), "unrolled", 1), batch, length)["total"]
  best = 100 * (1 - floor / tied_16l_bytes)
  print(f"  floor: one unrolled layer of the small cell takes {floor / GB:.2f} GB, so at most {best:.1f}% less")
  print("         than the weight-tied 16 layers is reachable by any method that backprops one layer")


def depth_sweep(batch, length, out_dir):
  base = row_config("deq_transformer_small")
  depths = [8, 16, 32, 64]
  tied, deq_full, deq_fixed = [], [], []
  for depth in depths:
    tied.append(step_memory(with_depth(base, "unrolled", depth), batch, length)["total"])
    deq_config = with_depth(base, "deq", depth)
    deq_full.append(deq_memory(deq_config, batch, length, None))
    deq_fixed.append(deq_memory(deq_config, batch, length, LIMITED_HISTORY))
  print("\nMemory against depth L (DEQ-Transformer small cell; DEQ: L forward and L backward solver steps):")
  print(f"{'L':>4s} {'weight-tied GB':>15s} {'DEQ full history GB':>20s} {'DEQ history 8 GB':>17s}")
  for row in zip(depths, tied, deq_full, deq_fixed, strict=True):
    print(f"{row[0]:4d} {row[1] / GB:15.2f} {row[2] / GB:20.2f} {row[3] / GB:17.2f}")
  spread = max(deq_fixed) / min(deq_fixed) - 1
  print(f"  DEQ (history 8) varies by {100 * spread:.1f}% from L = 8 to 64")
  fig, ax = plots.subplots(figsize=(5, 3.5), dpi=120)
  ax.plot(depths, [t / GB for t in tied], "o-", label="weight-tied, unrolled L layers")
  ax.plot(depths, [d / GB for d in deq_full], "s--", label="DEQ, L solver steps, full Broyden history")
  ax.plot(depths, [d / GB for d in deq_fixed], "^-", label="DEQ, L solver steps, history 8")
  ax.set_xscale("log", base=2)
  ax.set_xticks(depths, [str(d) for d in depths])
  ax.set_xlabel("depth L")
  ax.set_ylabel("training-step memory (GB)")
  ax.set_title(f"DEQ-Transformer small cell, batch {batch} x {length}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, "memory_vs_depth.png")
  plots.save(fig, path, dpi=120)
  print(f"  plot: {path}")


def step_times(batch, length, steps):
  """Median forward + backward time of the body at the small size, DEQ against the baselines."""
  print(f"\nForward + backward step time of the body (batch {batch}, length {length}), measured side by side:")
  runs = {}
  for name in ROWS[:3]:
    config = row_config(name)
    grad, args = body_step(config, batch, length, model=build_model(config, nnx.Rngs(0)))
    graphdef_args = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, args
    )
    body_params, rest, x, memory, probe, _ = graphdef_args
    x = jax.random.normal(jax.random.key(1), x.shape) * 0.5
    runs[name] = functools.partial(grad, body_params, rest, x, memory, probe, jax.random.key(0))

  times = median_times(runs, steps)
  deq = times["deq_transformer_small"]
  for name, t in times.items():
    print(f"  {name:38s} {t:8.2f} s/step   DEQ / this = {deq / t:.2f}x")


def main(argv):
  del argv
  rows = ROWS if FLAGS.rows == ["all"] else [row for row in ROWS if row in FLAGS.rows]
  memory_table(rows, FLAGS.batch, FLAGS.length)
  depth_sweep(FLAGS.batch, FLAGS.length, FLAGS.out)
  if FLAGS.time_steps:
    step_times(FLAGS.batch, FLAGS.length, FLAGS.time_steps)


if __name__ == "__main__":
  define_flags()
  app.run(main)

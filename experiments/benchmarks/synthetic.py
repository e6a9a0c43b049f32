r"""Training steps of any language-model config on synthetic tokens: speed and memory without the data.

    python -m experiments.benchmarks.synthetic \
      --config=experiments/configs/wikitext103/deq_transformer_small.py [--steps=10]

This is the GPU check of the WikiText-103 rows (WikiText-103 itself need not be on the machine):
the config's model is built as for training (its `n_token`, batch, segment length, dtype and
solver settings; override any with `--config.a.b=value`), and `--steps` jitted training steps
(parameters and optimizer state donated, as in training) run on uniform random tokens in the
row's final phase: the solver phase for DEQ rows, the unrolled weight-tied cell for `unrolled`
rows, the layers otherwise. Two untimed steps come first: one from the empty recurrent memory
(which fills it), then the steady-state step, compiled once ahead of time; the memory estimate
is that compilation's. Printed: median ms / step and tokens / s; the first step's loss beside
what an untrained model scores on uniform tokens (`uniform_softmax_loss`: ln n_token for a full
softmax, more for an adaptive one); the solver steps and residuals
(DEQ); the device's peak memory where the backend reports one (GPU, TPU) and XLA's compiled
estimate of the step (temporaries + arguments + outputs); the paper's GB for the row (batch 15 x
150, embeddings excluded, so the whole step's figure here is an upper bound for the comparison).
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from deqjax.nn.adaptive import check_cutoffs
from experiments import trainer
from experiments.analysis.paper import PAPER
from experiments.trainer.models import count_parameters

FLAGS = flags.FLAGS
GB = 1e9


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  config_flags.DEFINE_config_file("config", None, "A language-model config (experiments/configs/*.py).")
  flags.DEFINE_integer("steps", 10, "Timed training steps (the median is reported).")
  flags.mark_flags_as_required(["config"])


def uniform_softmax_loss(n_token: int, cutoffs=()) -> float:
  """Expected cross-entropy of uniform random targets under a softmax uniform within each of its levels.

  This is what an untrained model scores (its logits are near zero). Full softmax: ln V. Adaptive
  softmax with clusters C_1..C_k after the head: a target in the head costs ln(|head| + k), one in
  C_i costs ln(|head| + k) + ln |C_i| (the cluster is one head entry, then uniform inside it), so
  E = ln(|head| + k) + sum_i |C_i| / V * ln |C_i|.
  """
  bounds = check_cutoffs(n_token, cutoffs, 1)  # (0, *cutoffs, n_token)
  sizes = np.diff(bounds)
  head = sizes[0] + len(sizes) - 1
  return float(np.log(head) + np.sum(sizes[1:] / n_token * np.log(sizes[1:])))


def run_synthetic(config, steps: int, seed: int = 0) -> dict:
  """Times `steps` training steps of `config` on uniform random tokens; returns the measurements.

  Keys: ms_per_step (list of `steps` floats), tokens_per_s (median), first_loss, n_token,
  params / non_embedding (counts), compiled_bytes, peak_bytes (None where the backend has no
  memory statistics), and for DEQ rows f_steps, f_residual, b_steps, b_residual (last step).
  """
  if config.get("task", "wikitext") != "wikitext":
    raise ValueError(f"bench_synthetic runs language-model configs; config.task={config.task!r}.")
  n_token = config.model.n_token
  if n_token <= 0:
    raise ValueError(f"config.model.n_token={n_token} means 'from the data'; set it (--config.model.n_token=N).")
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}.")
  trainer.check_config(config)
  mesh = trainer.make_mesh()
  trainer.check_batch("batch_size", config.batch_size, mesh)
  rt, params = trainer.build_runtime(config, None, mesh)
  params_count, non_embedding = count_parameters(nnx.merge(rt.graphdef, params, rt.rest))
  phase = trainer.final_phase(config)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.tgt_len)

  def batch():
    x, y = rng.integers(0, n_token, shape, dtype=np.int32), rng.integers(0, n_token, shape, dtype=np.int32)
    return (trainer.to_global(a, rt.batch_sharding, config.batch_size) for a in (x, y))

  use_jac = trainer.uses_jac_reg(config, phase, 1)  # that of the timed step 1
  update = jax.jit(functools.partial(trainer.train_step, rt, phase, use_jac=use_jac), donate_argnums=(0, 1))
  params, opt_state, memory, metrics = update(params, opt_state, memory, *batch(), 0)  # empty memory -> full
  first_loss = float(metrics["loss"])
  x, y = batch()
  update = update.lower(params, opt_state, memory, x, y, 1).compile()  # the steady-state step, compiled once
  analysis = update.memory_analysis()
  compiled_bytes = None
  if analysis is not None:
    compiled_bytes = (
      analysis.temp_size_in_bytes
      + analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      - analysis.alias_size_in_bytes
    )
  params, opt_state, memory, metrics = update(params, opt_state, memory, x, y, 1)  # untimed warm-up
  jax.block_until_ready(metrics)
  times = []
  for step in range(steps):
    x, y = batch()
    start = time.perf_counter()
    params, opt_state, memory, metrics = update(params, opt_state, memory, x, y, 2 + step)
    jax.block_until_ready((params, metrics))
    times.append(time.perf_counter() - start)
  stats = jax.devices()[0].memory_stats() or {}
  result = {
    "ms_per_step": [1e3 * t for t in times],
    "tokens_per_s": config.batch_size * config.tgt_len / statistics.median(times),
    "first_loss": first_loss,
    "n_token": n_token,
    "params": params_count,
    "non_embedding": non_embedding,
    "compiled_bytes": compiled_bytes,
    "peak_bytes": stats.get("peak_bytes_in_use"),
  }
  if phase == "deq":
    result.update({k: float(metrics[k]) for k in ("f_steps", "f_residual", "b_steps", "b_residual")})
  return result


def main(argv):
  del argv
  config = FLAGS.config
  r = run_synthetic(config, FLAGS.steps)
  device = jax.devices()[0]
  print(f"{config.model_name} ({config.execution}), {r['params']:,} parameters ({r['non_embedding']:,} non-embedding)")
  print(f"  {jax.device_count()} x {device.device_kind}, batch {config.batch_size} x {config.tgt_len}, {config.dtype}")
  expected = uniform_softmax_loss(r["n_token"], config.model.get("cutoffs", ()))
  print(f"  first loss {r['first_loss']:.3f} (an untrained model on uniform tokens: {expected:.3f})")
  ms = statistics.median(r["ms_per_step"])
  print(f"  {ms:.1f} ms / step (median of {FLAGS.steps}), {r['tokens_per_s']:,.0f} tokens / s")
  if "f_steps" in r:
    print(
      f"  solver: forward {r['f_steps']:.1f} steps (residual {r['f_residual']:.1e}),"
      f" backward {r['b_steps']:.1f} steps (residual {r['b_residual']:.1e})"
    )
  shown = lambda b: "not reported by this backend" if b is None else f"{b / GB:.2f} GB"
  print(f"  device peak memory: {shown(r['peak_bytes'])}; compiled estimate of the step: {shown(r['compiled_bytes'])}")
  paper = PAPER.get(config.get("study", ""), {}).get(config.get("row", ""))
  if paper is not None and paper.memory_gb is not None:
    print(f"  paper: {paper.memory_gb} GB (batch 15 x 150, embeddings excluded)")


if __name__ == "__main__":
  define_flags()
  app.run(main)

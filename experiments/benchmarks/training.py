r"""Training throughput of the CPU default: the DEQ against its baselines, the solvers' share, the input pipeline.

    python -m experiments.benchmarks.training [--steps=20]

On the default config's data and batch (bundled WikiText-2 sample), times jitted
training steps side by side (alternating, median) for
  * the DEQ-Transformer (solving, with the config's solver caps and tolerances),
  * the same cell unrolled and weight-tied for L = pretrain_depth layers and for L = 12,
  * an untied Transformer-XL with the same cell width and 2 layers,
and prints tokens/s. The solvers' share of the DEQ step is estimated as
1 - t(caps of 1 forward / 1 backward step) / t(DEQ step), and the input pipeline
(ordered segment + device transfer) is timed alone against the step's consumption.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from deqjax.data import OrderedLMStream
from experiments import trainer
from experiments.benchmarks.solver_cases import median_times
from experiments.configs import default

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_integer("steps", 20, "Timed steps per model (median of alternating runs).")


def _runner(config, phase: str):
  """A zero-argument function running one training step of `config` in phase `phase`."""
  rt, params = trainer.setup(config)
  opt_state = rt.optimizer.init(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  stream = OrderedLMStream(rt.task.data.splits["train"], config.batch_size, config.tgt_len)
  use_jac = trainer.uses_jac_reg(config, phase, 1)  # that of the timed step 1
  step = jax.jit(lambda *a: trainer.train_step(rt, phase, *a, use_jac=use_jac))
  x, y = (jax.device_put(a, rt.batch_sharding) for a in stream.segment(0))
  _, _, memory, _ = step(params, opt_state, memory, x, y, 0)  # full-length memory from here on
  jax.block_until_ready(step(params, opt_state, memory, x, y, 1))  # compile
  return lambda: jax.block_until_ready(step(params, opt_state, memory, x, y, 1))


def _variant(execution: str, **model):
  config = default.get_config()
  config.execution = execution
  if execution == "layers":
    config.model_name = "transformer_xl"
    for field in ("max_iter", "backward_max_iter", "rtol", "backward_rtol", "pretrain_depth"):
      del config.model[field]
  config.model.update(model)
  return config


def main(argv):
  del argv
  base = default.get_config()
  depth = base.model.pretrain_depth
  variants = {
    "DEQ-Transformer (deq)": (_variant("deq"), "deq"),
    "DEQ, caps 1 / 1 (no solver work)": (_variant("deq", max_iter=1, backward_max_iter=1), "deq"),
    f"weight-tied, {depth} layers": (_variant("unrolled"), "pretrain"),
    "weight-tied, 12 layers": (_variant("unrolled", pretrain_depth=12), "pretrain"),
    "Transformer-XL untied, 2 layers": (_variant("layers", n_layer=2), "layers"),
  }
  runs = {name: _runner(config, phase) for name, (config, phase) in variants.items()}
  tokens = base.batch_size * base.tgt_len  # the same batch for every variant
  times = median_times(runs, FLAGS.steps)
  deq = times["DEQ-Transformer (deq)"]
  print(f"Training steps of the CPU default (batch {base.batch_size} x {base.tgt_len} tokens, {jax.devices()[0]}):")
  for name, t in times.items():
    print(f"  {name:36s} {1e3 * t:8.1f} ms/step  {tokens / t:8.0f} tokens/s  DEQ / this = {deq / t:.2f}x")
  share = 1 - times["DEQ, caps 1 / 1 (no solver work)"] / deq
  print(f"  solver share of the DEQ step: {100 * share:.0f}%  (1 - t(caps 1/1) / t(deq))")

  rt, _ = trainer.setup(base)
  stream = OrderedLMStream(rt.task.data.splits["train"], base.batch_size, base.tgt_len)

  def pipeline_step(k):
    x, y = stream.segment(k)
    return jax.block_until_ready([jax.device_put(a, rt.batch_sharding) for a in (x, y)])

  count = 2000
  start = time.perf_counter()
  for k in range(count):
    pipeline_step(k)
  per_batch = (time.perf_counter() - start) / count
  ratio = deq / per_batch
  print(
    f"  input pipeline alone: {1e6 * per_batch:.0f} us/batch = {tokens / per_batch:.0f}"
    f" tokens/s, {ratio:.0f}x the DEQ step's consumption"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)

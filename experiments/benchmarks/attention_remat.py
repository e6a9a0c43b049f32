r"""Rematerialised attention or stored probabilities, in one block of queries or several: the
DEQ-Transformer's training step each way.

    python -m experiments.benchmarks.attention_remat [--study=copy_memory --row=deq_transformer] [--steps=5]
        [--batch_size=0] [--chunks=4]

For the DEQ-Transformer of `experiments/configs/<study>/<row>.py` (a copy-memory classifier or a
language model), times its DEQ-phase training update (the config's caps, tolerances and Jacobian
penalty, at initialisation, on the task's first training batch) with `model.remat_attention` True
and False, and with `--chunks` > 0 also stored in that many blocks of queries
(`model.attention_chunks`), all in one block otherwise; side by side (alternating, median). Prints
the ratios and each compiled update's temporary memory, and checks that all give the same loss.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from experiments import trainer
from experiments.analysis.runs import load_config
from experiments.benchmarks.solver_cases import median_times

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("study", "copy_memory", "The config's study (experiments/configs/<study>/<row>.py).")
  flags.DEFINE_string("row", "deq_transformer", "The config's row: a DEQ-Transformer.")
  flags.DEFINE_integer("steps", 5, "Timed updates per variant (median of alternating runs).")
  flags.DEFINE_integer("batch_size", 0, "Override the config's batch size (0: keep it).")
  flags.DEFINE_integer("chunks", 0, "Also time stored attention in this many blocks of queries (0: not).")


def update_runner(config):
  """(a zero-argument function running one DEQ-phase update of `config`, its loss, its compiled temp bytes)."""
  rt, params = trainer.setup(config)
  opt_state = rt.optimizer.init(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  use_jac = trainer.uses_jac_reg(config, "deq", config.pretrain_steps)
  step = jax.jit(lambda *a: trainer.train_step(rt, "deq", *a, use_jac=use_jac))
  x, y = (jax.device_put(np.asarray(a), rt.batch_sharding) for a in rt.task.train_batch(0))
  args = (params, opt_state, memory, x, y, config.pretrain_steps)
  compiled = step.lower(*args).compile()
  analysis = compiled.memory_analysis()
  temp = None if analysis is None else analysis.temp_size_in_bytes
  _, _, _, metrics = compiled(*args)
  return (lambda: jax.block_until_ready(compiled(*args))), float(metrics["loss"]), temp


def main(argv):
  del argv
  variants = {
    "remat": dict(remat_attention=True, attention_chunks=1),
    "stored": dict(remat_attention=False, attention_chunks=1),
  }
  if FLAGS.chunks:
    variants[f"stored, {FLAGS.chunks} blocks"] = dict(remat_attention=False, attention_chunks=FLAGS.chunks)
  runs, losses, temps = {}, {}, {}
  for name, fields in variants.items():
    config = load_config(FLAGS.study, FLAGS.row)
    if FLAGS.batch_size:
      config.batch_size = FLAGS.batch_size
    if "remat_attention" not in config.model:
      raise app.UsageError(f"{FLAGS.study}/{FLAGS.row}: model {config.model_name!r} has no remat_attention field.")
    config.model.update(fields)
    runs[name], losses[name], temps[name] = update_runner(config)
  times = median_times(runs, FLAGS.steps)
  where = f"{FLAGS.study}/{FLAGS.row}, batch {config.batch_size}"
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {where}")
  for name in runs:
    memory = "" if temps[name] is None else f"   compiled temp memory {temps[name] / 2**20:8.1f} MiB"
    ratio = f"({times[name] / times['remat']:.2f}x remat)"
    print(f"  {name:18s} {times[name] * 1e3:9.1f} ms per DEQ update {ratio}   loss {losses[name]:.9g}{memory}")
  if max(abs(loss - losses["remat"]) for loss in losses.values()) > 1e-5 * abs(losses["remat"]):
    raise SystemExit(f"the variants' losses differ: {losses}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

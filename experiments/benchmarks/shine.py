r"""SHINE on a trained DEQ language model: adjoint steps, gradient accuracy and time, side by side.

    python -m experiments.benchmarks.shine --workdir=/tmp/deqjax_default \
        [--config=experiments/configs/default.py] [--segments=4] [--max_iter=30]

For the workdir's latest checkpoint (a DEQ phase), on `--segments` consecutive test segments
(memory carried from `--warm_segments` before them), the gradient of the mean NLL with respect to
all parameters is computed with the adjoint solve started from the cotangent (w0 = z_bar, the
default) and from the forward Broyden's estimate (`backward_init="shine"`, w0 = -B^T z_bar),
both with the same forward solve (`--max_iter`, the config's rtol) and the same adjoint tolerance
(`--backward_rtol`, cap `--backward_max_iter`). It prints per start: the forward and adjoint
steps and residuals, the relative error of the gradient against a reference whose adjoint is
solved far tighter (`--reference_rtol`), and the median time of the jitted gradient (timed
in alternation). A figure counts only with its residuals: both are printed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import deqjax
from deqjax.data import OrderedLMStream
from experiments import trainer
from experiments.benchmarks.solver_cases import median_times

FLAGS = flags.FLAGS
STARTS = ("cotangent", "shine")


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "The trained run's config file.")
  flags.DEFINE_string("workdir", None, "Workdir of a trained DEQ language model.", required=True)
  flags.DEFINE_integer("segments", 4, "Test segments measured.")
  flags.DEFINE_integer("warm_segments", 4, "Test segments evaluated first, so the measured ones have memory.")
  flags.DEFINE_integer("max_iter", 30, "Forward Broyden cap (its estimate is what SHINE reuses).")
  flags.DEFINE_float("backward_rtol", 1e-3, "Adjoint relative tolerance of the compared starts.")
  flags.DEFINE_integer("backward_max_iter", 60, "Adjoint cap of the compared starts.")
  flags.DEFINE_float("reference_rtol", 1e-7, "Adjoint relative tolerance of the reference gradient.")
  flags.DEFINE_integer("repeats", 5, "Timed repetitions (median).")


def gradient_fn(rt, phase, **solver):
  """jitted (params, memory, x, y) -> (gradient of the mean NLL, forward SolveInfo, BackwardStats)."""

  def loss(params, probe, memory, x, y):
    out = trainer.model_forward(rt, params, x, y, memory, key=None, phase=phase, probe=probe, **solver)
    return jnp.mean(out.nll), out.info

  def grad(params, memory, x, y):
    probe = deqjax.backward_probe(x.shape[0])
    (_, info), (grads, stats) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, probe, memory, x, y)
    return grads, info, stats

  return jax.jit(grad)


def main(argv):
  del argv
  rt, params, phase = trainer.restore_trained(FLAGS.config, FLAGS.workdir)
  if phase != "deq":
    raise ValueError(f"The checkpoint was last trained in phase {phase!r}; SHINE needs a DEQ.")
  c = rt.config
  stream = OrderedLMStream(rt.task.data.splits["test"], c.batch_size, c.tgt_len)
  segments = stream.eval_segments()
  memory = trainer.init_memory(rt, params, c.batch_size)
  advance = jax.jit(lambda p, m, x, y: trainer.model_forward(rt, p, x, y, m, key=None, phase=phase).memory)
  for _ in range(FLAGS.warm_segments):
    memory = advance(params, memory, *next(segments))
  batches = []
  for _ in range(FLAGS.segments):
    x, y = next(segments)
    batches.append((memory, x, y))
    memory = advance(params, memory, x, y)

  forward = dict(max_iter=FLAGS.max_iter)
  reference = gradient_fn(rt, phase, backward_rtol=FLAGS.reference_rtol, backward_max_iter=200, **forward)
  compared = {
    start: gradient_fn(
      rt,
      phase,
      backward_init=start,
      backward_rtol=FLAGS.backward_rtol,
      backward_max_iter=FLAGS.backward_max_iter,
      **forward,
    )  # fmt: skip
    for start in STARTS
  }
  setting = f"forward Broyden cap {FLAGS.max_iter}, adjoint rtol {FLAGS.backward_rtol} (cap {FLAGS.backward_max_iter})"
  print(
    f"jax {jax.__version__} on {jax.default_backend()}; {FLAGS.segments} segments {c.batch_size}x{c.tgt_len}; {setting}"
  )
  rows = {start: {"b_steps": [], "b_res": [], "b_conv": [], "err": []} for start in STARTS}
  for memory, x, y in batches:
    ref_grads, info, ref_stats = reference(params, memory, x, y)
    ref_norm = float(optax.tree_utils.tree_norm(ref_grads))
    forward_residual = float(jnp.median(info.rel_residual))
    print(f"  segment: forward {float(jnp.mean(info.nstep)):.1f} steps, rel. residual {forward_residual:.1e}"
          f" (median; converged {float(jnp.mean(info.converged)):.0%}); reference adjoint rel. residual"
          f" {float(jnp.max(ref_stats.rel_residual)):.1e} (max)")  # fmt: skip
    for start, fn in compared.items():
      grads, _, stats = fn(params, memory, x, y)
      diff = jax.tree.map(lambda a, b: a - b, grads, ref_grads)
      rows[start]["b_steps"].append(float(jnp.mean(stats.nstep)))
      rows[start]["b_res"].append(float(jnp.median(stats.rel_residual)))
      rows[start]["b_conv"].append(float(jnp.mean(stats.converged)))
      rows[start]["err"].append(float(optax.tree_utils.tree_norm(diff)) / ref_norm)
  memory, x, y = batches[0]
  times = median_times(
    {start: (lambda fn=fn: fn(params, memory, x, y)) for start, fn in compared.items()}, FLAGS.repeats
  )
  print(
    f"  {'adjoint start':14s} {'steps':>7s} {'rel. res.':>10s} {'converged':>10s} {'grad. error':>12s} {'time':>10s}"
  )
  for start in STARTS:
    r = rows[start]
    print(f"  {start:14s} {np.mean(r['b_steps']):7.2f} {np.median(r['b_res']):10.1e} {np.mean(r['b_conv']):10.0%}"
          f" {np.median(r['err']):12.2e} {times[start] * 1e3:8.1f} ms")  # fmt: skip
  print(f"  time ratio shine / cotangent: {times['shine'] / times['cotangent']:.3f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

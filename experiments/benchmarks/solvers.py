r"""Solver overhead: forward + implicit backward Broyden against the evaluation floor.

    python -m experiments.bench_solvers [--cases=a,b,c] [--repeats=5] [--batch_axis=0]

For each case it times, in one run and side by side,
  * deqjax: `jax.grad` of a loss through `fixed_point` (Broyden, exactly K
    forward and K backward steps: tol = rtol = 0, full history), and
  * the floor: K plain evaluations of f followed by K vector-Jacobian
    products w <- w^T J + c, each in a `fori_loop`,
and prints their ratio (the solver algebra's overhead) and the compiled
temporary memory of the deqjax step next to (2 * history + 8) * n * 4 bytes.

Cases:
  a  tanh layer z = tanh(z W + x U + b), batch 64, width 512, float32;
  b  transformer-like cell (post-LayerNorm self-attention + FFN), batch 4,
     length 150, d_model 256, 8 heads, d_inner 1024;
  c  a state of ~1e6 unknowns (batch 4 x 256 x 1024) with a cheap f;
     compiled memory only unless --run_c.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import app, flags

import deqjax
from experiments.benchmarks.solver_cases import CASES, deq_step, floor_step, median_times

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_list("cases", ["a", "b", "c"], "Which cases to run.")
  flags.DEFINE_integer("steps", 30, "Forward and backward Broyden steps K.")
  flags.DEFINE_integer("repeats", 5, "Timed repetitions (the median is reported).")
  flags.DEFINE_integer("batch_axis", 0, "Per-sample axis (-1 for one system over the whole batch).")
  flags.DEFINE_bool("run_c", False, "Also time case c (slow on a small CPU).")


def _temp_bytes(fn, args):
  analysis = fn.lower(*args).compile().memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes


def main(argv):
  del argv
  k = FLAGS.steps
  batch_axis = None if FLAGS.batch_axis < 0 else FLAGS.batch_axis
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; K = {k}, history = K, batch_axis = {batch_axis}")
  for name in FLAGS.cases:
    title, make = CASES[name]
    f, params, x, z0 = make(jax.random.key(0))
    n = z0.size
    probe = deqjax.backward_probe(None if batch_axis is None else z0.shape[batch_axis])
    deq = deq_step(f, k, batch_axis)
    deq_args = (params, x, z0, probe)
    temp = _temp_bytes(deq, deq_args)
    bound = (2 * k + 8) * n * 4
    print(f"({name}) {title}: n = {n:,}")
    print(
      f"    compiled temp memory {temp / 2**20:9.1f} MiB   bound (2*{k}+8)*n*4 = {bound / 2**20:.1f} MiB"
      f"   ratio {temp / bound:.2f}"
    )
    if name == "c" and not FLAGS.run_c:
      continue
    (_, stats), info = deq(*deq_args)
    fwd_steps = int(jnp.max(info.nstep))
    bwd_steps = int(jnp.max(stats.nstep))
    floor = floor_step(f, k)
    runs = {"deq": functools.partial(deq, *deq_args), "floor": functools.partial(floor, params, x, z0)}
    times = median_times(runs, FLAGS.repeats)
    t_deq, t_floor = times["deq"], times["floor"]
    print(
      f"    deqjax fwd+bwd {t_deq * 1e3:8.1f} ms  ({fwd_steps} + {bwd_steps} steps)   floor {t_floor * 1e3:8.1f} ms"
      f"   ratio {t_deq / t_floor:.2f}"
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)

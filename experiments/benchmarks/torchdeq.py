r"""deqjax against the PyTorch reference library (torchdeq) on the tanh layer of bench_solvers (a).

    pip install torch torchdeq   # not a deqjax dependency
    python -m experiments.benchmarks.torchdeq [--repeats=7]

Both sides run the same problem in one process: z = tanh(z W + x U + b), batch 64, width 512,
float32, per-sample Broyden with exactly 30 forward and 30 backward (implicit) steps (tol 0,
full history), loss sum(z cos z), gradients for W, U, b. The injection x U + b is computed once
per call on both sides. Prints the median time of a forward + backward step for each, the
speed-up, and the largest relative difference between the two gradients (same weights). The
two libraries take turns in blocks of runs: interleaving single runs lets torch's idle OpenMP
threads, which spin for a while after each call, slow down the JAX run that follows; each turn
also starts after a second of sleep, for the same reason.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

import deqjax
from experiments.benchmarks.solver_cases import deq_step, median_times, tanh_case

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_integer("repeats", 3, "Turns of 5 timed runs per library (the median is reported).")
  flags.DEFINE_integer("steps", 30, "Forward and backward Broyden steps.")


def main(argv):
  del argv
  try:
    import torch
    from torchdeq import get_deq
  except ImportError as error:
    raise SystemExit(f"This comparison needs torch and torchdeq (pip install torch torchdeq): {error}") from None
  k = FLAGS.steps
  f, params, x, z0 = tanh_case(jax.random.key(0))

  # deqjax
  step = deq_step(f, k, 0)
  probe = deqjax.backward_probe(64)
  (jax_grads, _), _ = step(params, x, z0, probe)

  # torchdeq, same weights
  torch.set_num_threads(max(1, torch.get_num_threads()))
  tp = {name: torch.tensor(np.asarray(value), requires_grad=True) for name, value in params.items()}
  tx = torch.tensor(np.asarray(x))
  deq = get_deq(f_solver="broyden", f_max_iter=k, f_tol=0.0, b_solver="broyden", b_max_iter=k, b_tol=0.0, ift=True)

  def torch_step():
    for value in tp.values():
      value.grad = None
    injection = tx @ tp["u"] + tp["b"]
    z_out, _ = deq(lambda z: torch.tanh(z @ tp["w"] + injection), torch.zeros_like(tx))
    z = z_out[-1]
    (z * torch.cos(z)).sum().backward()
    return {name: value.grad for name, value in tp.items()}

  torch_grads = torch_step()
  diff = max(
    float(
      np.max(np.abs(np.asarray(jax_grads[name]) - torch_grads[name].numpy()))
      / np.max(np.abs(torch_grads[name].numpy()))
    )
    for name in tp
  )
  times = median_times(
    {"jax": lambda: step(params, x, z0, probe), "torch": torch_step}, FLAGS.repeats, block=5, settle=1.0
  )
  t_jax, t_torch = times["jax"], times["torch"]
  print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), K = {k}")
  print(
    f"tanh layer 64x512, forward + implicit backward: deqjax {t_jax * 1e3:.1f} ms   torchdeq {t_torch * 1e3:.1f} ms"
  )
  print(f"speed-up deqjax vs torchdeq: {t_torch / t_jax:.2f}x   max relative gradient difference {diff:.2e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

"""Running a cell to its equilibrium (DEQ mode) or unrolled L times (pretraining mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from deqjax._broyden import Broyden
from deqjax._diagnostics import jacobian_frobenius_sq
from deqjax._fixed_point import fixed_point
from deqjax._info import SolveInfo

MODES = ("deq", "pretrain")


def solve_cell(
  step: Callable[[Any, Any, Any], Any],
  weights: Any,
  inputs: Any,
  z0: Any,
  *,
  mode: str = "deq",
  pretrain_depth: int = 2,
  **solver_options,
) -> tuple[Any, SolveInfo | None]:
  """The cell's output state in either training regime.

  Args:
    step: the cell's f(weights, z, inputs) (pure; weights are passed, not closed over).
    weights, inputs: as `step` takes them (weights differentiated implicitly).
    z0: the initial state (its gradient is zero in DEQ mode).
    mode: "deq" solves z* = f(z*) with `deqjax.fixed_point(**solver_options)`;
      "pretrain" applies f `pretrain_depth` times from z0 with ordinary backprop
      (the reference's shallow weight-tied warm-up).
    pretrain_depth: L for the pretraining mode.

  Returns:
    (z, info): info is the forward `SolveInfo` in DEQ mode and None when pretraining.
  """
  if mode == "deq":
    return fixed_point(step, weights, inputs, z0, **solver_options)
  if mode == "pretrain":
    if isinstance(pretrain_depth, bool) or not isinstance(pretrain_depth, int) or pretrain_depth < 1:
      raise ValueError(f"pretrain_depth must be an int >= 1; got {pretrain_depth!r}.")
    return unrolled(step, weights, inputs, z0, pretrain_depth), None
  raise ValueError(f"Unknown mode={mode!r}; expected one of {list(MODES)}.")


def lm_solver_options(
  f_max_iter: int, b_max_iter: int, f_tol: float, b_tol: float, history: int | None = None, **overrides
) -> dict:
  """The language models' solver settings: per-sample Broyden, relative tolerances, overridable per call.

  `history` is the number of Broyden updates kept (None: all of them, as the reference).
  """
  options = dict(
    solver=Broyden(history=history),
    max_iter=f_max_iter,
    tol=0.0,
    rtol=f_tol,
    batch_axis=0,
    backward_max_iter=b_max_iter,
    backward_tol=0.0,
    backward_rtol=b_tol,
  )
  options.update(overrides)
  return options


def unrolled(step, weights, inputs, z0, depth: int):
  """f applied `depth` times (a `fori_loop` with a static count: a scan under reverse mode)."""
  return jax.lax.fori_loop(0, depth, lambda _, z: step(weights, z, inputs), z0)


def jacobian_penalty(step, weights, z_star, inputs, key: jax.Array) -> jax.Array:
  """Per-sample Hutchinson estimate of ||df/dz||_F^2 / n at the detached equilibrium: `[batch]`.

  The Jacobian regulariser of Bai et al. (2021): the loss adds gamma times its mean. It is
  differentiable in the weights and inputs, n is the state size of one sample, and
  `z_star`'s leaves have the batch on axis 0.
  """
  z = jax.lax.stop_gradient(z_star)
  n = sum(leaf[0].size for leaf in jax.tree.leaves(z))
  return jacobian_frobenius_sq(step, weights, z, inputs, key, batch_axis=0) / n

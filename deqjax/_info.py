"""What a solve reports: the status codes and the fixed-shape info pytrees."""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Status(enum.IntEnum):
  """Why a solve stopped (the `status` field of `SolveInfo`).

  CONVERGED: the residual met `tol` / `rtol`.
  MAX_STEPS: `max_iter` steps were taken without meeting the tolerance.
  NONFINITE: a NaN or inf appeared in f(z) - z; the best finite iterate is returned.
  DIVERGED: the residual grew past `divergence_ratio` times the initial one.
  STALLED: the best residual did not fall by the relative `stall_margin` over `stall_window`
    steps (stall detection, off by default); the best iterate is returned.
  """

  CONVERGED = 0
  MAX_STEPS = 1
  NONFINITE = 2
  DIVERGED = 3
  STALLED = 4


# Internal marker for a system that is still iterating; never returned.
RUNNING = -1


class SolveInfo(NamedTuple):
  """Statistics of one solve; every field has a fixed shape.

  With `batch_axis=None` the per-system fields are scalars; with a batch axis
  they have shape `[batch]` (one entry per sample).

  Attributes:
    nstep: int32, evaluations of f after the initial one (steps taken).
    residual: absolute ||f(z) - z||_2 of the returned z (work dtype).
    rel_residual: residual / ||f(z)||_2 of the returned z.
    converged: bool, `status == Status.CONVERGED`.
    status: int32 `Status` code.
    trace: `[max_iter + 1]` (or `[batch, max_iter + 1]`) residual after each
      step, entry 0 being the initial guess; entries after `nstep` are -1.
    states: the iterates `fixed_point(..., trajectory_steps=...)` asked for, one
      state (shaped like z) per requested step count, carrying no gradient; a
      system that stopped earlier gives its returned z. `()` when none were asked.
  """

  nstep: jax.Array
  residual: jax.Array
  rel_residual: jax.Array
  converged: jax.Array
  status: jax.Array
  trace: jax.Array
  states: tuple = ()


class BackwardStats(NamedTuple):
  """Statistics of the backward (adjoint) solve, delivered as a gradient.

  A custom VJP cannot return auxiliary outputs from its backward pass, so the
  backward statistics travel as the cotangent of a probe: pass
  `backward_probe=deqjax.backward_probe(...)` to `fixed_point` and
  differentiate with respect to it; the "gradient" is this tuple. Fields are
  float32 (scalars, or `[batch]` with a batch axis). Cotangents add up, so a
  probe shared by several `fixed_point` calls receives the sums.

  Attributes:
    nstep: steps of the adjoint solve (0 for the phantom backward).
    residual: absolute residual of the adjoint solution.
    rel_residual: its relative residual.
    converged: 1.0 if the adjoint solve converged (always 1.0 for phantom).
    status: the `Status` code as a float.
  """

  nstep: jax.Array
  residual: jax.Array
  rel_residual: jax.Array
  converged: jax.Array
  status: jax.Array


def backward_probe(batch_size: int | None = None) -> BackwardStats:
  """A zero probe whose cotangent receives the backward-solve statistics.

  Args:
    batch_size: None for `batch_axis=None` solves (scalar fields), else the
      batch size of a per-sample solve (fields of shape `[batch_size]`).

  Returns:
    A `BackwardStats` of float32 zeros.
  """
  shape = () if batch_size is None else (batch_size,)
  return BackwardStats(*(jnp.zeros(shape, jnp.float32) for _ in BackwardStats._fields))


def stats_from_info(info: SolveInfo) -> BackwardStats:
  """The float32 `BackwardStats` view of a `SolveInfo` (drops the trace)."""
  f32 = lambda a: jnp.asarray(a).astype(jnp.float32)
  return BackwardStats(
    nstep=f32(info.nstep),
    residual=f32(info.residual),
    rel_residual=f32(info.rel_residual),
    converged=f32(info.converged),
    status=f32(info.status),
  )

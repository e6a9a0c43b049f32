"""The one `lax.while_loop` that drives every solver.

A solver only proposes steps (`init`, `update`); this loop evaluates the
residual, keeps the lowest-residual iterate of every system, decides which
systems stop and why (converged / step cap / non-finite / diverged), freezes
the stopped ones and records the residual trace.

All arrays are working matrices `[batch, n]` (see `_flat.FlatSpec`); a row is
one independent system with its own stopping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jax import lax

from deqjax._info import RUNNING, SolveInfo, Status

# residual_fn(z) -> (g, scale): g = f(z) - z `[batch, n]`, scale = ||f(z)|| `[batch]`.
ResidualFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


@runtime_checkable
class Solver(Protocol):
  """What a solver supplies to the driver: a memory and the step it proposes (z_next = z + step).

  The built-in solvers follow it, and so may a user's: pass any hashable object with these three
  methods (a frozen dataclass, say) as `solver=` or `backward_solver=`. Arrays are the working
  matrices `[batch, n]` (one row per independent system); the state is any pytree of fixed shape.
  """

  def init(self, z: jax.Array, g: jax.Array, max_iter: int) -> Any:
    """Memory from the initial guess z `[batch, n]` and its residual g = f(z) - z."""

  def direction(self, state: Any, z: jax.Array, g: jax.Array) -> jax.Array:
    """The next step `[batch, n]` from iterate z with residual g.

    Computed at the start of a step, so the last update of a solve (after
    which the loop stops) never pays for a direction.
    """

  def update(self, state: Any, z: jax.Array, g: jax.Array, dz: jax.Array, dg: jax.Array, active: jax.Array) -> Any:
    """New memory after a step dz that led to iterate z, changing the residual by dg.

    `active` `[batch]` marks the systems still iterating; the others must be
    left untouched by the solver's memory.
    """


def fresh_zeros(shape: tuple[int, ...], anchor: jax.Array, element: int = 0) -> jax.Array:
  """Zeros of `anchor`'s dtype that XLA can neither share nor create early.

  Solver buffers are large (history x n). Plain `jnp.zeros` are constants:
  XLA merges those of the forward and backward solves into one broadcast (on
  the GPU, one fusion writing all four history buffers) and runs it up front,
  so both solves' buffers are alive at once (twice the memory). Deriving the
  zero from `anchor` (a value the solve computes first) keeps each buffer
  private and allocated only when its solve starts. The zero is
  `where(isfinite(a), a, 0) * 0`: 0 for every anchor, NaN and inf included,
  and an expression XLA cannot fold to a constant (it does not track that the
  select is finite). An earlier `(a != a) * 0` was folded on the GPU, whose
  simplifier knows a converted predicate is 0 or 1. Two buffers anchored on
  the same array should use different `element`s, or XLA merges them into
  one broadcast and copies it.
  """
  if anchor.size == 0:  # an empty state: nothing to anchor on, and nothing to share
    return jnp.zeros(shape, anchor.dtype)
  scalar = anchor.reshape(-1)[element]
  zero = jnp.where(jnp.isfinite(scalar), scalar, 0) * 0
  return jnp.broadcast_to(zero, shape)


def exact_einsum(subscripts: str, *operands: jax.Array) -> jax.Array:
  """`jnp.einsum` at full precision, for the solvers' own products over the unknowns.

  Under JAX's default precision a float32 product runs on a GPU in TF32 and on a TPU in bfloat16
  passes (relative error ~1e-3), which would bound the accuracy of the quasi-Newton and Krylov
  algebra whatever tolerance was asked for. These are products of a history `[batch, m, n]` with
  vectors, bound by memory bandwidth, so full precision costs no time; on the CPU it changes nothing.
  The user's `f` keeps whatever precision it asks for.
  """
  return jnp.einsum(subscripts, *operands, precision=lax.Precision.HIGHEST)


def row_norm(a: jax.Array) -> jax.Array:
  """Euclidean norm of each row of `[batch, n]` -> `[batch]`."""
  return jnp.sqrt(jnp.sum(jnp.square(a), axis=1))


def residual_norm(a: jax.Array) -> jax.Array:
  """`row_norm` that does not overflow for finite rows (the norms the solvers stop on).

  The sum of squares overflows long before the norm does (float32: from entries of about 2e19).
  A second sum, of the squares of the entries scaled by 2^-(maxexp / 2), is formed in the same
  pass over `a` and used for the rows where the first is inf: their largest entry is then at least
  ~2^(maxexp / 2), so the scaled sum is >= ~1 and what the scaling flushes to zero (entries below
  ~2^(minexp / 2 + maxexp / 2)) is far below its rounding. Other rows keep the plain norm, unchanged;
  a row holding inf or NaN stays non-finite.
  """
  factor = 2.0 ** -(jnp.finfo(a.dtype).maxexp // 2)
  squares = jnp.sum(jnp.square(a), axis=1)
  scaled = jnp.sum(jnp.square(a * jnp.asarray(factor, a.dtype)), axis=1)
  return jnp.where(jnp.isinf(squares), jnp.sqrt(scaled) / jnp.asarray(factor, a.dtype), jnp.sqrt(squares))


class _Carry(NamedTuple):
  step: jax.Array  # int32 scalar, loop counter
  z: jax.Array  # [batch, n] current iterate
  g: jax.Array  # [batch, n] f(z) - z
  solver_state: Any
  best_z: jax.Array  # [batch, n] lowest-residual iterate seen
  best_residual: jax.Array  # [batch]
  best_scale: jax.Array  # [batch] ||f(best_z)||
  nstep: jax.Array  # [batch] int32
  status: jax.Array  # [batch] int32, RUNNING while iterating
  trace: jax.Array  # [batch, max_iter + 1]
  stall_anchor: jax.Array  # [batch] the residual to beat by the stall margin
  stall_steps: jax.Array  # [batch] int32, steps since the anchor was last beaten
  kept: jax.Array  # [K, batch, n] the iterates after the step counts in `keep_steps` (K = 0: none)


class Limits(NamedTuple):
  """When a solve stops: its step cap and its tolerances (see `classify`)."""

  max_iter: int
  tol: float
  rtol: float
  divergence_ratio: float
  max_growth: float  # inf: no bound
  stall_window: int = 0  # 0: no stall detection
  stall_margin: float = 0.0


def scale_bound(initial_scale: jax.Array, z0: jax.Array, limits: Limits) -> jax.Array:
  """`[batch]` the run-away bound on the scale: `max_growth` x max(||f(z0)||, ||z0||) (inf: none)."""
  if not math.isfinite(limits.max_growth):
    return jnp.full_like(initial_scale, jnp.inf)
  return limits.max_growth * jnp.maximum(initial_scale, residual_norm(z0))


def classify(residual, scale, initial_residual, bound, limits: Limits):
  """Status of each system `[batch]` after an evaluation: CONVERGED, NONFINITE, DIVERGED or RUNNING.

  An iterate whose scale ||f(z)|| is past the run-away `bound` never counts as converged: growth
  alone would pass the relative test, and far enough out f(z) - z rounds to 0 and passes any test.
  It keeps iterating (a quasi-Newton step may overshoot and come back) and is never returned as
  the best iterate; a run-away thus ends at the step cap as MAX_STEPS with the best iterate within
  the bound, its residual reported as it is. A residual grown `divergence_ratio`-fold
  stops the system as DIVERGED at once. NaN compares false with everything, so non-finiteness is
  tested first and explicitly: a NaN residual must never read as converged.
  """
  within = scale <= bound
  converged = within & ((residual < limits.tol + limits.rtol * scale) | (residual == 0))
  diverged = residual > limits.divergence_ratio * initial_residual
  return jnp.where(
    ~jnp.isfinite(residual),
    Status.NONFINITE,
    jnp.where(converged, Status.CONVERGED, jnp.where(diverged, Status.DIVERGED, RUNNING)),
  ).astype(jnp.int32)


def final_status(status: jax.Array) -> jax.Array:
  """The status of systems stopped by the step cap: MAX_STEPS (the best iterate within the bound is returned)."""
  return jnp.where(status == RUNNING, Status.MAX_STEPS, status).astype(jnp.int32)


def solve(
  residual_fn: ResidualFn, z0: jax.Array, solver: Solver, limits: Limits, keep_steps: tuple[int, ...] = ()
) -> tuple[jax.Array, SolveInfo]:
  """Iterates `solver` on `residual_fn` from `z0` `[batch, n]` until `limits` stop each row.

  keep_steps: step counts (increasing, in 1..max_iter) after which the iterate is kept: K buffers
  of `[batch, n]`, not the trajectory. A row that stopped before a count keeps its returned iterate.

  Returns:
    The lowest-residual iterate of each row `[batch, n]` and a batched
    `SolveInfo` (fields `[batch]`, trace `[batch, max_iter + 1]`, states `[K, batch, n]` or ()).
  """
  max_iter = limits.max_iter
  batch = z0.shape[0]
  g0, scale0 = residual_fn(z0)
  residual0 = residual_norm(g0)
  bound = scale_bound(scale0, z0, limits)
  status0 = classify(residual0, scale0, residual0, bound, limits)
  solver_state = solver.init(z0, g0, max_iter)
  trace0 = jnp.full((batch, max_iter + 1), -1.0, residual0.dtype).at[:, 0].set(residual0)

  def cond(c: _Carry):
    return (c.step < max_iter) & jnp.any(c.status == RUNNING)

  def body(c: _Carry) -> _Carry:
    active = c.status == RUNNING
    active_col = active[:, None]
    step = jnp.where(active_col, solver.direction(c.solver_state, c.z, c.g), 0)
    z = c.z + step
    g, scale = residual_fn(z)
    # A frozen row keeps its residual even if f mixes rows (e.g. batch statistics).
    g = jnp.where(active_col, g, c.g)
    residual = residual_norm(g)
    status = jnp.where(active, classify(residual, scale, residual0, bound, limits), c.status)
    # Stall detection: progress is a residual below (1 - margin) x the anchor (the residual at the
    # last progress); `stall_window` steps without it stop the row (its best iterate is returned).
    # Off (window 0): nothing is computed, the two fields pass through.
    stall_anchor, stall_steps = c.stall_anchor, c.stall_steps
    if limits.stall_window:
      progress = residual < (1 - limits.stall_margin) * c.stall_anchor
      stall_anchor = jnp.where(active & progress, residual, c.stall_anchor)
      stall_steps = jnp.where(progress, 0, c.stall_steps + 1)
      stalled = active & (status == RUNNING) & (stall_steps >= limits.stall_window)
      status = jnp.where(stalled, Status.STALLED, status).astype(jnp.int32)
    # The returned iterate is the lowest-residual one within the run-away bound, or the one that
    # converged (the status then describes the iterate returned, even where an earlier one had a
    # lower residual).
    improved = active & (((residual < c.best_residual) & (scale <= bound)) | (status == Status.CONVERGED))
    still_active = status == RUNNING
    solver_state = solver.update(c.solver_state, z, g, step, g - c.g, still_active)
    return _Carry(
      step=c.step + 1,
      z=z,
      g=g,
      solver_state=solver_state,
      best_z=jnp.where(improved[:, None], z, c.best_z),
      best_residual=jnp.where(improved, residual, c.best_residual),
      best_scale=jnp.where(improved, scale, c.best_scale),
      nstep=c.nstep + active.astype(jnp.int32),
      status=status,
      trace=c.trace.at[:, c.step + 1].set(jnp.where(active, residual, -1.0)),
      stall_anchor=stall_anchor,
      stall_steps=stall_steps,
      kept=_keep(c.kept, keep_steps, c.step + 1, active, z),
    )

  # A NaN initial residual must not be beaten by nothing: start the best at +inf
  # only where the initial residual is not finite.
  best_residual0 = jnp.where(jnp.isfinite(residual0), residual0, jnp.inf)
  carry = _Carry(
    step=jnp.zeros((), jnp.int32),
    z=z0,
    g=g0,
    solver_state=solver_state,
    best_z=z0,
    best_residual=best_residual0,
    best_scale=scale0,
    nstep=jnp.zeros((batch,), jnp.int32),
    status=status0,
    trace=trace0,
    stall_anchor=best_residual0,
    stall_steps=jnp.zeros((batch,), jnp.int32),
    kept=jnp.zeros((len(keep_steps), *z0.shape), z0.dtype),
  )
  carry = lax.while_loop(cond, body, carry)
  status = final_status(carry.status)
  residual = jnp.where(jnp.isfinite(carry.best_residual), carry.best_residual, residual0)
  tiny = jnp.finfo(residual.dtype).tiny
  info = SolveInfo(
    nstep=carry.nstep,
    residual=residual,
    rel_residual=residual / jnp.maximum(carry.best_scale, tiny),
    converged=status == Status.CONVERGED,
    status=status,
    trace=carry.trace,
  )
  if keep_steps:
    # Rows that stopped before a kept step count never wrote it: they give their returned iterate.
    reached = carry.nstep[None, :] >= jnp.asarray(keep_steps)[:, None]  # [K, batch]
    info = info._replace(states=jnp.where(reached[..., None], carry.kept, carry.best_z[None]))
  return carry.best_z, info


def _keep(kept: jax.Array, keep_steps: tuple[int, ...], step_count: jax.Array, active: jax.Array, z: jax.Array):
  """`kept` `[K, batch, n]` with z written into slot k for the active rows where step_count == keep_steps[k]."""
  if not keep_steps:
    return kept
  hit = (jnp.asarray(keep_steps) == step_count)[:, None] & active[None, :]  # [K, batch]
  return jnp.where(hit[..., None], z[None], kept)

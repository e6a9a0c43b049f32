"""Krylov solvers for the adjoint (linear) system, per system (row), matrix-free.

The implicit backward pass solves a linear system A w = b with A applied by one VJP:
A w = w - J^T w and b = z_bar for a fixed point, A u = -G^T u for a root. The residual
r(w) = b - A w is then exactly the residual the fixed-point solvers see (h - w, or h), and the
scale of the relative test is the same ||w + r(w)||.

Both methods run inside one `lax.while_loop`, one matrix-vector product (one VJP of the whole
batch) per iteration, with each row (independent system) stopping on its own tolerance; a stopped
row is frozen. `nstep` counts the products after the initial residual; `max_iter` caps it. The
solve ends with one more product: the true residual of the returned w, which alone decides the
reported status (the loop's own residual is a recurrence, the reported one is not).

* `GMRES(restart)`: restarted GMRES. Arnoldi with classical Gram-Schmidt applied twice (CGS2, one
  pass over the basis per sweep), Givens rotations for the least-squares residual, the solution
  formed at the end of each cycle (one pass over the basis). A restart evaluates the true
  residual (one product).
* `BiCGStab()`: van der Vorst's BiCGStab, two products per iteration (so `nstep` grows by 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deqjax._driver import Limits, classify, exact_einsum, final_status, fresh_zeros, residual_norm, scale_bound
from deqjax._info import RUNNING, SolveInfo, Status

# matvec(v) -> A v, on working matrices `[batch, n]`.
MatVec = Callable[[jax.Array], jax.Array]


def _row_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[b, n]` . `[b, n]` -> `[b]`."""
  return jnp.sum(a * b, axis=1)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> tuple[jax.Array, jax.Array]:
  """numerator / denominator where that is finite and the denominator non-zero, else 0; and where it was."""
  ok = (denominator != 0) & jnp.isfinite(denominator)
  quotient = numerator / jnp.where(ok, denominator, 1)
  ok = ok & jnp.isfinite(quotient)
  return jnp.where(ok, quotient, 0), ok


def _finish(matvec: MatVec, b, w, loop_status, nstep, trace, limits: Limits, residual0, bound):
  """The reported `SolveInfo`: the true residual of the returned w decides a convergence."""
  r = b - matvec(w)
  residual = residual_norm(r)
  scale = residual_norm(w + r)
  true_status = classify(residual, scale, residual0, bound, limits)
  # The loop's own verdicts stand for a failure; a convergence only if the true residual agrees.
  loop_status = jnp.where(loop_status == Status.CONVERGED, RUNNING, loop_status)
  status = final_status(jnp.where(true_status == RUNNING, loop_status, true_status))
  tiny = jnp.finfo(residual.dtype).tiny
  info = SolveInfo(
    nstep=nstep,
    residual=residual,
    rel_residual=residual / jnp.maximum(scale, tiny),
    converged=status == Status.CONVERGED,
    status=status,
    trace=trace,
  )
  return w, info


def _start(matvec: MatVec, b, w0, limits: Limits):
  """r0 = b - A w0 `[batch, n]`; its norm, its scale ||w0 + r0||, the run-away bound, the status `[batch]`."""
  r0 = b - matvec(w0)
  residual0 = residual_norm(r0)
  scale0 = residual_norm(w0 + r0)
  bound = scale_bound(scale0, w0, limits)
  return r0, residual0, scale0, bound, classify(residual0, scale0, residual0, bound, limits)


class _GmresCarry(NamedTuple):
  step: jax.Array  # int32 scalar, products so far (after the initial residual)
  position: jax.Array  # int32 scalar, column of the cycle the next product fills (0: restart)
  w: jax.Array  # [batch, n] solution at the start of the cycle
  basis: jax.Array  # [batch, m + 1, n] Arnoldi vectors
  hessenberg: jax.Array  # [batch, m + 1, m] (rotated: upper triangular in its first columns)
  cosines: jax.Array  # [batch, m] Givens rotations
  sines: jax.Array  # [batch, m]
  rhs: jax.Array  # [batch, m + 1] rotated beta e_1; |rhs[j]| is the residual after j columns
  columns: jax.Array  # [batch] int32, columns of this cycle that count for the row
  scale: jax.Array  # [batch] ||w + r|| at the start of the cycle
  nstep: jax.Array  # [batch] int32
  status: jax.Array  # [batch] int32, RUNNING while iterating
  trace: jax.Array  # [batch, max_iter + 1]


@dataclasses.dataclass(frozen=True)
class GMRES:
  """Restarted GMRES for the adjoint solve (`backward_solver="gmres"` or `deqjax.GMRES(restart=...)`).

  Attributes:
    restart: Krylov vectors per cycle (m); the memory is (m + 1) x batch x n.
  """

  restart: int = 20

  def __post_init__(self):
    if isinstance(self.restart, bool) or not isinstance(self.restart, int) or self.restart < 1:
      raise ValueError(f"GMRES restart must be an int >= 1; got restart={self.restart!r}.")

  def init(self, z, g, max_iter):
    """The basis and the Hessenberg matrix of one cycle (what the memory check measures)."""
    del max_iter
    batch, n = z.shape
    m = self.restart
    return fresh_zeros((batch, m + 1, n), g), jnp.zeros((batch, m + 1, m), g.dtype)

  def solve_linear(self, matvec: MatVec, b: jax.Array, w0: jax.Array, limits: Limits):
    """w with A w = b from w0, per row; returns (w `[batch, n]`, `SolveInfo`)."""
    batch, n = w0.shape
    m = self.restart
    dtype = w0.dtype
    r0, residual0, scale0, bound, status0 = _start(matvec, b, w0, limits)
    basis, hessenberg = self.init(w0, r0, limits.max_iter)
    beta = jnp.where(residual0 > 0, residual0, 1)
    basis = basis.at[:, 0].set(r0 / beta[:, None])
    rows = jnp.arange(m + 1)

    def combine(c: _GmresCarry) -> jax.Array:
      """w + V y, y solving the rotated triangular system of each row's counted columns."""
      cols = jnp.arange(m)
      counted = cols[None, :] < c.columns[:, None]  # [b, m]
      upper = c.hessenberg[:, :m, :]
      # Uncounted columns: identity rows and zero right-hand sides, so their y entries are 0.
      eye = jnp.eye(m, dtype=dtype)[None]
      mask2 = counted[:, :, None] & counted[:, None, :]
      triangular = jnp.where(mask2, upper, eye)
      y = jax.scipy.linalg.solve_triangular(triangular, jnp.where(counted, c.rhs[:, :m], 0)[..., None], lower=False)
      y = jnp.where(jnp.isfinite(y[..., 0]), y[..., 0], 0)
      return c.w + exact_einsum("bm,bmn->bn", y, c.basis[:, :m])

    def cond(c: _GmresCarry):
      return (c.step < limits.max_iter) & jnp.any(c.status == RUNNING)

    def restart(c: _GmresCarry, product, active):
      """The true residual of w (product = A w) starts a new cycle."""
      r = b - product
      residual = residual_norm(r)
      scale = residual_norm(c.w + r)
      start = r / jnp.where(residual > 0, residual, 1)[:, None]
      first = lax.dynamic_index_in_dim(c.basis, 0, 1, keepdims=False)
      c = c._replace(
        basis=lax.dynamic_update_index_in_dim(c.basis, jnp.where(active[:, None], start, first), 0, 1),
        rhs=jnp.where(active[:, None], jnp.zeros_like(c.rhs).at[:, 0].set(residual), c.rhs),
        scale=jnp.where(active, scale, c.scale),
      )
      return c, residual, scale

    def arnoldi(c: _GmresCarry, product, active):
      """Column j of the cycle from product = A v_j: Gram-Schmidt twice, then the Givens rotations."""
      j = c.position - 1
      earlier = (rows <= j)[None, :]  # [1, m + 1]: v_0 .. v_j
      h1 = jnp.where(earlier, exact_einsum("bmn,bn->bm", c.basis, product), 0)
      v = product - exact_einsum("bm,bmn->bn", h1, c.basis)
      h2 = jnp.where(earlier, exact_einsum("bmn,bn->bm", c.basis, v), 0)
      v = v - exact_einsum("bm,bmn->bn", h2, c.basis)
      h_next = residual_norm(v)
      v_next, _ = _safe_divide(v, h_next[:, None])
      column = (h1 + h2).at[:, j + 1].set(h_next)  # [b, m + 1], entries 0 .. j + 1

      def rotate(i, col):  # rotation i acts on entries i, i + 1 of every column after it
        x, y = col[:, i], col[:, i + 1]
        cs, sn = c.cosines[:, i], c.sines[:, i]
        col = col.at[:, i].set(jnp.where(i < j, cs * x + sn * y, x))
        return col.at[:, i + 1].set(jnp.where(i < j, -sn * x + cs * y, y))

      column = lax.fori_loop(0, m, rotate, column)
      x = lax.dynamic_index_in_dim(column, j, 1, keepdims=False)
      y = lax.dynamic_index_in_dim(column, j + 1, 1, keepdims=False)
      radius = jnp.hypot(x, y)
      cs, ok = _safe_divide(x, radius)
      sn, _ = _safe_divide(y, radius)
      cs = jnp.where(ok, cs, 1)
      column = lax.dynamic_update_index_in_dim(column, radius, j, 1)
      column = lax.dynamic_update_index_in_dim(column, jnp.zeros_like(radius), j + 1, 1)
      g_j = lax.dynamic_index_in_dim(c.rhs, j, 1, keepdims=False)
      rhs = lax.dynamic_update_index_in_dim(c.rhs, cs * g_j, j, 1)
      rhs = lax.dynamic_update_index_in_dim(rhs, -sn * g_j, j + 1, 1)
      # A lucky breakdown (h_next = 0) solves the row exactly: sn = 0 and the residual is 0.
      residual = jnp.abs(sn * g_j)
      act = active[:, None]
      old_next = lax.dynamic_index_in_dim(c.basis, j + 1, 1, keepdims=False)
      old_column = lax.dynamic_index_in_dim(c.hessenberg, j, 2, keepdims=False)
      c = c._replace(
        basis=lax.dynamic_update_index_in_dim(c.basis, jnp.where(act, v_next, old_next), j + 1, 1),
        hessenberg=lax.dynamic_update_index_in_dim(c.hessenberg, jnp.where(act, column, old_column), j, 2),
        cosines=jnp.where(act, c.cosines.at[:, j].set(cs), c.cosines),
        sines=jnp.where(act, c.sines.at[:, j].set(sn), c.sines),
        rhs=jnp.where(act, rhs, c.rhs),
        columns=jnp.where(active, j + 1, c.columns),
      )
      return c, residual, c.scale

    def body(c: _GmresCarry) -> _GmresCarry:
      active = c.status == RUNNING
      restarting = c.position == 0
      column = jnp.maximum(c.position - 1, 0)
      vector = jnp.where(restarting, c.w, lax.dynamic_index_in_dim(c.basis, column, 1, keepdims=False))
      product = matvec(vector)
      c, residual, scale = lax.cond(restarting, restart, arnoldi, c, product, active)
      status = jnp.where(active, classify(residual, scale, residual0, bound, limits), c.status)
      c = c._replace(
        step=c.step + 1,
        position=c.position + 1,
        nstep=c.nstep + active.astype(jnp.int32),
        status=status,
        trace=c.trace.at[:, c.step + 1].set(jnp.where(active, residual, -1.0)),
      )
      # End of a cycle: form every row's solution (a row stopped earlier in the cycle forms that of
      # its last counted column; one stopped in an earlier cycle counts none), then restart.
      return lax.cond(
        c.position == m + 1,
        lambda s: s._replace(w=combine(s), position=jnp.zeros((), jnp.int32), columns=jnp.zeros_like(s.columns)),
        lambda s: s,
        c,
      )

    carry = _GmresCarry(
      step=jnp.zeros((), jnp.int32),
      position=jnp.ones((), jnp.int32),  # the initial residual has started the first cycle
      w=w0,
      basis=basis,
      hessenberg=hessenberg,
      cosines=jnp.zeros((batch, m), dtype),
      sines=jnp.zeros((batch, m), dtype),
      rhs=jnp.zeros((batch, m + 1), dtype).at[:, 0].set(residual0),
      columns=jnp.zeros((batch,), jnp.int32),
      scale=scale0,
      nstep=jnp.zeros((batch,), jnp.int32),
      status=status0,
      trace=jnp.full((batch, limits.max_iter + 1), -1.0, dtype).at[:, 0].set(residual0),
    )
    carry = lax.while_loop(cond, body, carry)
    w = combine(carry)
    return _finish(matvec, b, w, carry.status, carry.nstep, carry.trace, limits, residual0, bound)


class _BicgstabCarry(NamedTuple):
  step: jax.Array  # int32 scalar, products so far
  w: jax.Array  # [batch, n]
  r: jax.Array  # [batch, n] recurrence residual
  p: jax.Array  # [batch, n]
  v: jax.Array  # [batch, n]
  rho: jax.Array  # [batch]
  alpha: jax.Array  # [batch]
  omega: jax.Array  # [batch]
  nstep: jax.Array  # [batch] int32
  status: jax.Array  # [batch] int32
  trace: jax.Array  # [batch, max_iter + 1]


@dataclasses.dataclass(frozen=True)
class BiCGStab:
  """BiCGStab for the adjoint solve (`backward_solver="bicgstab"`); two products per iteration."""

  def init(self, z, g, max_iter):
    """Its vectors (what the memory check measures): w, r, r_hat, p, v, s, t."""
    del max_iter
    return tuple(fresh_zeros(z.shape, g, element=i) for i in range(7))

  def solve_linear(self, matvec: MatVec, b: jax.Array, w0: jax.Array, limits: Limits):
    """w with A w = b from w0, per row; returns (w `[batch, n]`, `SolveInfo`)."""
    batch = w0.shape[0]
    dtype = w0.dtype
    r0, residual0, _, bound, status0 = _start(matvec, b, w0, limits)
    r_hat = r0
    ones = jnp.ones((batch,), dtype)

    def cond(c: _BicgstabCarry):
      return (c.step + 2 <= limits.max_iter) & jnp.any(c.status == RUNNING)

    def body(c: _BicgstabCarry) -> _BicgstabCarry:
      active = c.status == RUNNING
      rho = _row_dot(r_hat, c.r)
      ratio, ok1 = _safe_divide(rho * c.alpha, c.rho * c.omega)
      p = c.r + ratio[:, None] * (c.p - c.omega[:, None] * c.v)
      v = matvec(p)
      alpha, ok2 = _safe_divide(rho, _row_dot(r_hat, v))
      s = c.r - alpha[:, None] * v
      t = matvec(s)
      omega, ok3 = _safe_divide(_row_dot(t, s), _row_dot(t, t))
      w = c.w + alpha[:, None] * p + omega[:, None] * s
      r = s - omega[:, None] * t
      residual = residual_norm(r)
      scale = residual_norm(w + r)
      status = classify(residual, scale, residual0, bound, limits)
      # A breakdown (rho or r_hat . v or t . t zero) ends the row where it is, unless s solved it.
      breakdown = ~(ok1 & ok2) | (~ok3 & (residual_norm(s) > 0))
      status = jnp.where(active, jnp.where((status == RUNNING) & breakdown, Status.MAX_STEPS, status), c.status)
      keep = lambda new, old: jnp.where(active[:, None] if new.ndim == 2 else active, new, old)
      return _BicgstabCarry(
        step=c.step + 2,
        w=keep(w, c.w),
        r=keep(r, c.r),
        p=keep(p, c.p),
        v=keep(v, c.v),
        rho=keep(rho, c.rho),
        alpha=keep(alpha, c.alpha),
        omega=keep(omega, c.omega),
        nstep=c.nstep + 2 * active.astype(jnp.int32),
        status=status.astype(jnp.int32),
        # Entry 2k - 1: ||s|| after the first product of iteration k; entry 2k: ||r|| after the second.
        trace=c.trace.at[:, c.step + 1]
        .set(jnp.where(active, residual_norm(s), -1.0))
        .at[:, c.step + 2]
        .set(jnp.where(active, residual, -1.0)),
      )

    carry = _BicgstabCarry(
      step=jnp.zeros((), jnp.int32),
      w=w0,
      r=r0,
      p=jnp.zeros_like(w0),
      v=jnp.zeros_like(w0),
      rho=ones,
      alpha=ones,
      omega=ones,
      nstep=jnp.zeros((batch,), jnp.int32),
      status=status0,
      trace=jnp.full((batch, limits.max_iter + 1), -1.0, dtype).at[:, 0].set(residual0),
    )
    carry = lax.while_loop(cond, body, carry)
    return _finish(matvec, b, carry.w, carry.status, carry.nstep, carry.trace, limits, residual0, bound)


KRYLOV = {"gmres": GMRES, "bicgstab": BiCGStab}

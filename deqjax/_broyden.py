"""Limited-memory ("good") Broyden with a low-rank inverse-Jacobian estimate.

For the residual g(z) = f(z) - z the solver keeps, per system (row),

    B = -I + sum_k u_k v_k^T   ~   (dg/dz)^{-1},

and steps z <- z - B g (step size 1). B_0 = -I makes the first step
z_1 = f(z_0). After a step dz that changed the residual by dg, the
Sherman-Morrison form of the good Broyden update makes B dg = dz hold:

    v^T = dz^T B,    u = (dz - B dg) / (v^T dg),

and a pair whose denominator is 0 or non-finite is skipped (B unchanged).

Two storages, chosen by whether the history can hold every step:

* Full history (`history=None` or >= max_iter, the reference's setting):
  compact form. Since v_k = -dz_k + sum_{i<k} (u_i . dz_k) v_i and
  u_k = (dz_k + dg_k - sum_{i<k} (v_i . dg_k) u_i) / den_k, every u is a
  combination of the rows S_k = dz_k + dg_k and every v of the rows
  D_k = dz_k:  U = M S,  V = L D  with small lower-triangular M, L
  `[batch, m, m]`. A step reads the big buffers three times:
      S dz (dots),  D g (dots),  S^T w (one combination: the next direction),
  and only writes the new rows S_k, D_k; u and v are never formed. v . dg
  and v . g follow from the small vectors (see `_compact_update`).

* Limited history (ring buffer, oldest pair overwritten): U, V are stored
  explicitly, since a dropped pair's row may still be referenced by the
  later ones. A step reads them four times:
      U^T dz, V^T g (dots),  V (U^T dz),  U [V^T dg, V^T g] (combinations).

In both, V^T dg costs no pass: dg = g - g_prev and the dots with g_prev are
carried from the previous step. Products are single-vector einsums over the
`n` axis with the batch axis leading: the forms XLA:CPU runs near memory
bandwidth (multi-vector dot products over `n` are several times slower).
Buffers are `[batch, m, n]` and are updated in place.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deqjax._driver import exact_einsum, fresh_zeros


class CompactBroydenState(NamedTuple):
  s_rows: jax.Array  # [batch, m, n]  S_k = dz_k + dg_k
  d_rows: jax.Array  # [batch, m, n]  D_k = dz_k
  m_coef: jax.Array  # [batch, m, m]  U = M S (row k: u_k)
  l_coef: jax.Array  # [batch, m, m]  V = L D (row k: v_k)
  d_dot_g: jax.Array  # [batch, m]   D g for the last residual g
  weights: jax.Array  # [batch, m]   the next direction is g - S^T weights
  count: jax.Array  # int32 scalar, rows stored


class RingBroydenState(NamedTuple):
  us: jax.Array  # [batch, m, n]
  vs: jax.Array  # [batch, m, n]
  vtg: jax.Array  # [batch, m], V^T g for the current V and the last residual g
  next_direction: jax.Array  # [batch, n], -B g for the last residual g
  slot: jax.Array  # int32 scalar, next slot to overwrite


def _dots(buffer: jax.Array, vector: jax.Array) -> jax.Array:
  """`[b, m, n]` . `[b, n]` -> `[b, m]`."""
  return exact_einsum("bmn,bn->bm", buffer, vector)


def _combine(coefficients: jax.Array, buffer: jax.Array) -> jax.Array:
  """`[b, k, m]` x `[b, m, n]` -> `[b, k, n]`: sum_m coefficients[b, k, m] * buffer[b, m]."""
  return exact_einsum("bkm,bmn->bkn", coefficients, buffer)


def _matvec(matrix: jax.Array, vector: jax.Array) -> jax.Array:
  """`[b, m, m]` x `[b, m]` -> `[b, m]`."""
  return exact_einsum("bij,bj->bi", matrix, vector)


def _vecmat(vector: jax.Array, matrix: jax.Array) -> jax.Array:
  """`[b, m]` x `[b, m, m]` -> `[b, m]`."""
  return exact_einsum("bi,bij->bj", vector, matrix)


def _row_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[b, n]` . `[b, n]` -> `[b]`."""
  return jnp.sum(a * b, axis=1)


def _put(array: jax.Array, row: jax.Array, index: jax.Array) -> jax.Array:
  """array[:, index] = row, in place."""
  return lax.dynamic_update_index_in_dim(array, row, index, 1)


def _compact_update(state: CompactBroydenState, g, dz, dg, active):
  k = state.count
  m = state.s_rows.shape[1]
  sigma = _dots(state.s_rows, dz)  # S dz                      [b, m]
  delta = _dots(state.d_rows, g)  # D g                        [b, m]
  a = _matvec(state.m_coef, sigma)  # u_i . dz   (row k of M is still 0)
  c = _matvec(state.l_coef, delta)  # v_i . g
  b = _matvec(state.l_coef, delta - state.d_dot_g)  # v_i . dg
  dz_g = _row_dot(dz, g)
  # v_k = -dz + sum_i a_i v_i, hence v_k . dg = -dz . dg + a . b and v_k . g = -dz . g + a . c.
  denominator = -_row_dot(dz, dg) + jnp.sum(a * b, axis=1)
  v_g = -dz_g + jnp.sum(a * c, axis=1)
  ok = active & jnp.isfinite(denominator) & (denominator != 0) & jnp.isfinite(v_g)
  safe_denominator = jnp.where(ok, denominator, 1.0)
  unit = jax.nn.one_hot(k, m, dtype=g.dtype)[None]  # e_k                 [1, m]
  m_row = jnp.where(ok[:, None], (unit - _vecmat(b, state.m_coef)) / safe_denominator[:, None], 0)
  l_row = jnp.where(ok[:, None], _vecmat(a, state.l_coef) - unit, 0)
  m_coef = _put(state.m_coef, m_row, k)
  l_coef = _put(state.l_coef, l_row, k)
  ok_col = ok[:, None]
  s_rows = _put(state.s_rows, jnp.where(ok_col, dz + dg, 0), k)
  d_rows = _put(state.d_rows, jnp.where(ok_col, dz, 0), k)
  # Next direction -B_new g = g - sum_i u_i (v_i . g) = g - S^T (M^T c'), c' = c with c'_k = v_k . g;
  # the pass over S is made by `direction`, at the start of the next step.
  c_new = c + unit * jnp.where(ok, v_g, 0)[:, None]
  weights = _vecmat(c_new, m_coef)
  d_dot_g = delta + unit * jnp.where(ok, dz_g, 0)[:, None]
  return CompactBroydenState(s_rows, d_rows, m_coef, l_coef, d_dot_g, weights, k + 1)


def _ring_update(state: RingBroydenState, g, dz, dg, active):
  us, vs, slot = state.us, state.vs, state.slot
  a = _dots(us, dz)  # U^T dz                          [b, m]
  c = _dots(vs, g)  # V^T g                            [b, m]
  b = c - state.vtg  # V^T dg = V^T g - V^T g_prev     [b, m]
  v = _combine(a[:, None], vs)[:, 0] - dz  # B^T dz = -dz + sum_m (u_m . dz) v_m
  u_b, u_c = jnp.unstack(_combine(jnp.stack([b, c], axis=1), us), axis=1)  # U b, U c
  denominator = _row_dot(v, dg)[:, None]  # v^T dg     [b, 1]
  u = (dz + dg - u_b) / denominator  # (dz - B dg) / (v^T dg), B dg = U b - dg
  # Zero the pair where it is undefined (0/0, inf) or the system is frozen;
  # a zero pair leaves B unchanged.
  keep = active[:, None] & jnp.isfinite(u) & jnp.isfinite(v)
  u = jnp.where(keep, u, 0)
  v = jnp.where(keep, v, 0)
  v_g = _row_dot(v, g)  # [b]
  # Next direction -B_new g = g - U V^T g - u (v^T g).
  direction = g - u_c - u * v_g[:, None]
  us = _put(us, u, slot)
  vs = _put(vs, v, slot)
  vtg = _put(c, v_g, slot)
  return RingBroydenState(us, vs, vtg, direction, (slot + 1) % us.shape[1])


@dataclasses.dataclass(frozen=True)
class Broyden:
  """Limited-memory good Broyden.

  Attributes:
    history: number of (u, v) pairs kept; None keeps `max_iter` of them
      (full history, as the reference implementation). With fewer than
      `max_iter`, the oldest pair is overwritten once the buffer is full.
  """

  history: int | None = None

  def __post_init__(self):
    if self.history is not None and (
      isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1
    ):
      raise ValueError(f"Broyden history must be None or an int >= 1; got history={self.history!r}.")

  def init(self, z, g, max_iter):
    batch, n = g.shape
    if self.history is None or self.history >= max_iter - 1:
      # One row per update. The max_iter-th update is never followed by a
      # direction, so it needs no row of its own: its write is clamped onto
      # the last row after that row's last use.
      m = max(max_iter - 1, 1)
      small = jnp.zeros((batch, m, m), g.dtype)
      state = CompactBroydenState(
        s_rows=fresh_zeros((batch, m, n), g),
        d_rows=fresh_zeros((batch, m, n), g, element=-1),  # distinct from s_rows: no copy
        m_coef=small,
        l_coef=small,
        d_dot_g=jnp.zeros((batch, m), g.dtype),
        weights=jnp.zeros((batch, m), g.dtype),
        count=jnp.zeros((), jnp.int32),
      )
    else:
      m = self.history
      state = RingBroydenState(
        us=fresh_zeros((batch, m, n), g),
        vs=fresh_zeros((batch, m, n), g, element=-1),  # distinct from us: no copy
        vtg=jnp.zeros((batch, m), g.dtype),
        next_direction=g,
        slot=jnp.zeros((), jnp.int32),
      )
    return state

  def direction(self, state, z, g):
    del z
    if isinstance(state, CompactBroydenState):
      # B_0 = -I: with no rows (weights 0) this is g, so the first step is z_1 = f(z_0).
      return g - _combine(state.weights[:, None], state.s_rows)[:, 0]
    return state.next_direction

  def update(self, state, z, g, dz, dg, active):
    del z
    if isinstance(state, CompactBroydenState):
      return _compact_update(state, g, dz, dg, active)
    return _ring_update(state, g, dz, dg, active)

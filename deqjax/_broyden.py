"""Limited-memory ("good") Broyden with a low-rank inverse-Jacobian estimate.

For the residual g(z) = f(z) - z the solver keeps, per system (row),

    B = -I + sum_k u_k v_k^T   ~   (dg/dz)^{-1},

as two buffers U, V of shape `[batch, history, n]`, and steps z <- z - B g
(step size 1). B_0 = -I makes the first step z_1 = f(z_0). After a step dz
that changed the residual by dg, the Sherman-Morrison form of the good
Broyden update makes B dg = dz hold exactly:

    v^T = dz^T B,    u = (dz - B dg) / (v^T dg).

When the buffers are full the oldest pair is overwritten (ring buffer).

Cost: four passes over the buffers per step, each a single-vector einsum
(the forms XLA:CPU runs near memory bandwidth; multi-vector dot products
over `n` are several times slower there):
  U^T dz (dots),  V^T g (dots),  V (U^T dz) (combination),  U [V^T dg, V^T g] (combination).
V^T dg needs no pass of its own: dg = g - g_prev and V^T g_prev is known
from the previous step (V changed only in the slot just written), so it is
carried as `vtg`. The new pair is written into the carried buffers in place.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deqjax._driver import fresh_zeros


class BroydenState(NamedTuple):
  us: jax.Array  # [batch, history, n]
  vs: jax.Array  # [batch, history, n]
  vtg: jax.Array  # [batch, history], V^T g for the current V and the last residual g
  slot: jax.Array  # int32 scalar, next ring-buffer slot to overwrite


def _dots(buffer: jax.Array, vector: jax.Array) -> jax.Array:
  """`[b, m, n]` . `[b, n]` -> `[b, m]`."""
  return jnp.einsum("bmn,bn->bm", buffer, vector)


def _combine(coefficients: jax.Array, buffer: jax.Array) -> jax.Array:
  """`[b, k, m]` x `[b, m, n]` -> `[b, k, n]`: sum_m coefficients[b, k, m] * buffer[b, m]."""
  return jnp.einsum("bkm,bmn->bkn", coefficients, buffer)


@dataclasses.dataclass(frozen=True)
class Broyden:
  """Limited-memory good Broyden.

  Attributes:
    history: number of (u, v) pairs kept; None keeps `max_iter` of them
      (full history, as the reference implementation).
  """

  history: int | None = None

  def __post_init__(self):
    if self.history is not None and (
      isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1
    ):
      raise ValueError(f"Broyden history must be None or an int >= 1; got history={self.history!r}.")

  def init(self, z, g, max_iter):
    m = max_iter if self.history is None else self.history
    batch = z.shape[0]
    shape = (batch, m, z.shape[1])
    state = BroydenState(
      fresh_zeros(shape, g), fresh_zeros(shape, g), jnp.zeros((batch, m), g.dtype), jnp.zeros((), jnp.int32)
    )
    # B_0 = -I, so the first direction -B_0 g is g itself.
    return state, g

  def update(self, state, z, g, dz, dg, active):
    del z
    us, vs, slot = state.us, state.vs, state.slot
    a = _dots(us, dz)  # U^T dz                          [b, m]
    c = _dots(vs, g)  # V^T g                            [b, m]
    b = c - state.vtg  # V^T dg = V^T g - V^T g_prev     [b, m]
    v = _combine(a[:, None], vs)[:, 0] - dz  # B^T dz = -dz + sum_m (u_m . dz) v_m
    u_b, u_c = jnp.unstack(_combine(jnp.stack([b, c], axis=1), us), axis=1)  # U b, U c
    denominator = jnp.sum(v * dg, axis=1, keepdims=True)  # v^T dg     [b, 1]
    u = (dz + dg - u_b) / denominator  # (dz - B dg) / (v^T dg), B dg = U b - dg
    # Zero the pair where it is undefined (0/0, inf) or the system is frozen;
    # a zero pair leaves B unchanged.
    keep = active[:, None] & jnp.isfinite(u) & jnp.isfinite(v)
    u = jnp.where(keep, u, 0)
    v = jnp.where(keep, v, 0)
    v_g = jnp.sum(v * g, axis=1)  # [b]
    # Next direction -B_new g = g - U V^T g - u (v^T g).
    direction = g - u_c - u * v_g[:, None]
    us = lax.dynamic_update_index_in_dim(us, u, slot, 1)
    vs = lax.dynamic_update_index_in_dim(vs, v, slot, 1)
    vtg = lax.dynamic_update_index_in_dim(c, v_g, slot, 1)
    return BroydenState(us, vs, vtg, (slot + 1) % us.shape[1]), direction

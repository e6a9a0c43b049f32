"""Anderson acceleration (type II) with a ring buffer of past iterates.

Per system, with the last m iterates x_i and residuals g_i = f(x_i) - x_i,
the next iterate is

    z_next = sum_i alpha_i (x_i + beta g_i),   alpha = argmin ||sum_i alpha_i g_i||^2 + lam ||alpha||^2
                                               subject to sum_i alpha_i = 1,

solved through the bordered system [[0, 1^T], [1, G G^T + lam I]] [nu; alpha] = [1; 0].
The ridge is relative: lam = ridge * max_i ||g_i||^2, so it regularises at
every residual scale instead of swamping G G^T once the residuals are small.
The Gram matrix G G^T is kept up to date one row per step (one pass over G).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deqjax._driver import exact_einsum, fresh_zeros


class AndersonState(NamedTuple):
  xs: jax.Array  # [batch, m, n] past iterates
  gs: jax.Array  # [batch, m, n] their residuals
  gram: jax.Array  # [batch, m, m] G G^T over the stored residuals
  count: jax.Array  # int32 scalar, pairs stored so far (saturates at m)
  slot: jax.Array  # int32 scalar, next slot to overwrite


@dataclasses.dataclass(frozen=True)
class Anderson:
  """Anderson acceleration.

  Attributes:
    history: number of past iterates mixed (m); the same name and the same
      `[batch, m, n]` buffer layout as `Broyden`'s history.
    ridge: relative Tikhonov regularisation of the least-squares problem.
    beta: mixing parameter; 1 mixes the f(x_i) only.
  """

  history: int = 5
  ridge: float = 1e-4
  beta: float = 1.0

  def __post_init__(self):
    if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
      raise ValueError(f"Anderson history must be an int >= 1; got history={self.history!r}.")
    if not self.ridge >= 0:
      raise ValueError(f"Anderson ridge must be >= 0; got ridge={self.ridge!r}.")
    if not self.beta > 0:
      raise ValueError(f"Anderson beta must be > 0; got beta={self.beta!r}.")

  def _store(self, state: AndersonState, z, g, active):
    """Writes (z, g) of the active rows into the ring and refreshes the Gram row."""
    m = state.xs.shape[1]
    slot = state.slot
    active_col = active[:, None]
    old_x = lax.dynamic_index_in_dim(state.xs, slot, 1, keepdims=False)
    old_g = lax.dynamic_index_in_dim(state.gs, slot, 1, keepdims=False)
    xs = lax.dynamic_update_index_in_dim(state.xs, jnp.where(active_col, z, old_x), slot, 1)
    gs = lax.dynamic_update_index_in_dim(state.gs, jnp.where(active_col, g, old_g), slot, 1)
    row = exact_einsum("bmn,bn->bm", gs, jnp.where(active_col, g, old_g))  # [b, m]
    gram = state.gram
    new_gram = lax.dynamic_update_index_in_dim(gram, row, slot, 1)
    new_gram = lax.dynamic_update_index_in_dim(new_gram, row, slot, 2)
    gram = jnp.where(active[:, None, None], new_gram, gram)
    return AndersonState(xs, gs, gram, jnp.minimum(state.count + 1, m), (slot + 1) % m)

  def _mix(self, state: AndersonState, z):
    """The Anderson iterate from the stored history, as a step from z."""
    m = state.xs.shape[1]
    valid = jnp.arange(m) < state.count  # [m]
    gram = state.gram
    batch = gram.shape[0]
    diag = jnp.diagonal(gram, axis1=1, axis2=2)  # [b, m]
    scale = jnp.max(jnp.where(valid[None], diag, 0), axis=1)  # [b]
    lam = self.ridge * scale + jnp.finfo(gram.dtype).tiny
    eye = jnp.eye(m, dtype=gram.dtype)
    pair_mask = (valid[:, None] & valid[None, :]).astype(gram.dtype)
    # Invalid slots get an identity row and no constraint weight: alpha_i = 0.
    h = gram * pair_mask[None] + eye[None] * jnp.where(valid[None], lam[:, None], 1.0)[:, None, :]
    ones = valid.astype(gram.dtype)
    top = jnp.concatenate([jnp.zeros((1,), gram.dtype), ones])
    bordered = jnp.concatenate(
      [
        jnp.broadcast_to(top, (batch, 1, m + 1)),
        jnp.concatenate([jnp.broadcast_to(ones[None, :, None], (batch, m, 1)), h], axis=2),
      ],
      axis=1,
    )
    rhs = jnp.zeros((batch, m + 1), gram.dtype).at[:, 0].set(1.0)
    alpha = jnp.linalg.solve(bordered, rhs[..., None])[:, 1:, 0]  # [b, m]
    mixed_x = exact_einsum("bm,bmn->bn", alpha, state.xs)
    mixed_g = exact_einsum("bm,bmn->bn", alpha, state.gs)
    return mixed_x + self.beta * mixed_g - z

  def init(self, z, g, max_iter):
    del max_iter
    m = self.history
    batch, n = z.shape
    state = AndersonState(
      xs=fresh_zeros((batch, m, n), z),
      gs=fresh_zeros((batch, m, n), z, element=-1),  # distinct from xs: no copy
      gram=jnp.zeros((batch, m, m), z.dtype),
      count=jnp.zeros((), jnp.int32),
      slot=jnp.zeros((), jnp.int32),
    )
    return self._store(state, z, g, jnp.ones((batch,), bool))

  def direction(self, state, z, g):
    del g  # the newest residual is already in the history
    return self._mix(state, z)

  def update(self, state, z, g, dz, dg, active):
    del dz, dg
    return self._store(state, z, g, active)

"""Variational dropout: one mask per sequence, shared by every position and every solver step."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def variational_mask(key: jax.Array | None, batch: int, features: int, rate: float, dtype=jnp.float32):
  """A dropout mask `[batch, 1, features]` broadcast over the length axis, or None.

  In a DEQ the mask is sampled once per segment and handed to the cell as an
  input, so f stays one fixed function across all forward and backward solver
  iterations. Kept units are scaled by 1 / (1 - rate).

  Args:
    key: PRNG key, or None for evaluation (no dropout).
    batch, features: the mask's shape.
    rate: probability of dropping a unit, in [0, 1).

  Returns:
    None when `key` is None or `rate` is 0 (apply nothing), else the mask.
  """
  if not 0 <= rate < 1:
    raise ValueError(f"dropout rate must be in [0, 1); got {rate}.")
  if key is None or rate == 0:
    return None
  keep = jax.random.bernoulli(key, 1.0 - rate, (batch, 1, features))
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def position_mask(key: jax.Array | None, batch: int, length: int, rate: float, dtype=jnp.float32):
  """A dropout mask `[batch, length, 1]` that drops whole positions (all their features), or None.

  The reference DEQ-Transformer's output dropout: its `VariationalDropout` reads a
  `[batch, channels, length]` tensor as `[batch, length, channels]`, so its mask is drawn per
  position and shared by the channels. Arguments as `variational_mask`.
  """
  mask = variational_mask(key, batch, length, rate, dtype)
  return None if mask is None else jnp.swapaxes(mask, 1, 2)


def apply_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """x `[batch, length, features]` times the mask (identity for None)."""
  return x if mask is None else x * mask.astype(x.dtype)

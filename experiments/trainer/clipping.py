"""Gradient clipping relative to the recent gradient norms (an optax transformation).

A fixed global-norm clip (`optax.clip_by_global_norm`) is set once for the whole run, while a
run's gradient norms fall by orders of magnitude (copy memory: ~0.5 when the DEQ phase starts,
~1e-3 at its end). A single bad batch late in training (a forward solve that failed) then
passes the fixed clip at hundreds of times the typical norm; Adam turns it into a step of
several learning rates in every coordinate and its second moment stays inflated for thousands of
steps. `clip_relative_to_running_norm` bounds each gradient's norm by a multiple of a running
average of the (clipped) norms before it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class RunningNormState(NamedTuple):
  """The running average's state (scalars): its uncorrected value and the number of updates seen."""

  average: jnp.ndarray  # sum over past updates k of (1 - decay) decay^(count-1-k) * clipped norm_k
  count: jnp.ndarray


def clip_relative_to_running_norm(max_ratio: float, decay: float) -> optax.GradientTransformation:
  """Scales the gradient down to norm `max_ratio` × (average of the previous clipped norms).

  Args:
    max_ratio: > 1; a gradient whose global norm is at most `max_ratio` times the running
      average passes unchanged.
    decay: in [0, 1); the exponential average's weight of the past (0.98: about 50 steps).
      It averages the norms after clipping, so a spike does not raise the bound for the next.

  The first update passes unchanged (no average yet). The state is two scalars.
  """
  if not max_ratio > 1:
    raise ValueError(f"max_ratio must be > 1; got max_ratio={max_ratio}.")
  if not 0 <= decay < 1:
    raise ValueError(f"decay must be in [0, 1); got decay={decay}.")

  def init(params):
    del params
    return RunningNormState(average=jnp.zeros([], jnp.float32), count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    norm = optax.global_norm(updates).astype(jnp.float32)
    seen = state.count > 0
    mean_norm = state.average / jnp.where(seen, 1 - decay ** state.count.astype(jnp.float32), 1.0)
    bound = jnp.where(seen, max_ratio * mean_norm, jnp.inf)
    scale = jnp.where(norm > bound, bound / norm, 1.0)
    updates = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)
    average = decay * state.average + (1 - decay) * norm * scale
    return updates, RunningNormState(average=average, count=state.count + 1)

  return optax.GradientTransformation(init, update)

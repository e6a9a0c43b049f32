"""Parameter averaging: an exponential moving average of the parameters (an optax transformation).

Late in a run the parameters still move by about one learning rate per step in every coordinate
(Adam normalises the step), and a model at a loss of 1e-4 scores up to 2x apart on validations 200
steps apart (copy memory, docs/notes/copy_memory_recipe.md item 29). Evaluating an average of the
recent parameters instead of the last ones smooths that walk (Polyak averaging).

`average_parameters` goes last in the optimizer's chain: it passes the updates through unchanged
and keeps, in its state, the average of the parameters each update produces, so the average is
checkpointed, restored and skipped on a non-finite step with the rest of the optimizer state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ParameterAverageState(NamedTuple):
  """The average (a pytree like the parameters) and the number of updates seen (a scalar)."""

  average: optax.Params
  count: jnp.ndarray


def average_parameters(decay: float, from_step: int = 0) -> optax.GradientTransformation:
  """Keeps a_k = decay a_{k-1} + (1 - decay) p_k, p_k the parameters after update k (k = 1, 2, ...).

  Args:
    decay: in (0, 1); the average's weight of the past (0.99: about the last 100 updates).
    from_step: updates 1 .. from_step set the average to their parameters (a_k = p_k), so the
      average starts from the parameters of step `from_step` and holds nothing older (e.g. nothing of a
      pretraining phase); the default 0 starts it from the initial parameters.

  The transformation needs the parameters (`update(updates, state, params)`) and returns the
  updates unchanged; read the average with `averaged_parameters(opt_state)`.
  """
  if not 0 < decay < 1:
    raise ValueError(f"decay must be in (0, 1); got decay={decay}.")
  if from_step < 0:
    raise ValueError(f"from_step must be >= 0; got from_step={from_step}.")

  def init(params):
    return ParameterAverageState(average=jax.tree.map(jnp.copy, params), count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("average_parameters needs the parameters: call update(updates, state, params).")
    new_params = optax.apply_updates(params, updates)
    weight = jnp.where(state.count >= from_step, decay, 0.0)  # update count + 1; 0: restart from p_k

    def blend(average, p):
      w = weight.astype(average.dtype)
      return w * average + (1 - w) * p.astype(average.dtype)

    average = jax.tree.map(blend, state.average, new_params)
    return updates, ParameterAverageState(average=average, count=state.count + 1)

  return optax.GradientTransformation(init, update)


def averaged_parameters(opt_state) -> optax.Params | None:
  """The average kept by `average_parameters` in an optimizer state (a chain's included), or None if it has none."""
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ParameterAverageState))
    if isinstance(s, ParameterAverageState)
  ]
  if len(found) > 1:
    raise ValueError(f"The optimizer state holds {len(found)} parameter averages; expected at most one.")
  return found[0].average if found else None

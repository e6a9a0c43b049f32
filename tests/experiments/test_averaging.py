"""The parameters' moving average (experiments/trainer/averaging.py) against its closed form."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.trainer import average_parameters, averaged_parameters


@pytest.mark.parametrize("from_step", [0, 2])
def test_the_average_is_the_closed_form_over_the_parameters_each_update_produced(from_step):
  decay, lr = 0.6, 0.5
  optimizer = optax.chain(optax.sgd(lr), average_parameters(decay, from_step))
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  state = optimizer.init(params)
  history = [params]  # p_0, p_1, ...
  rng = np.random.default_rng(0)
  for _ in range(5):
    grads = {"w": jnp.asarray(rng.normal(size=2), jnp.float32), "b": jnp.asarray(rng.normal(), jnp.float32)}
    updates, state = optimizer.update(grads, state, params)
    # The updates pass unchanged: plain SGD's.
    np.testing.assert_allclose(updates["w"], -lr * grads["w"], rtol=1e-6)
    params = optax.apply_updates(params, updates)
    history.append(params)
  # a_K = decay^(K-F) p_F + (1 - decay) sum_{k=F+1..K} decay^(K-k) p_k, K = 5, F = from_step.
  K, F = 5, from_step
  for name in ("w", "b"):
    expected = decay ** (K - F) * history[F][name] + (1 - decay) * sum(
      decay ** (K - k) * history[k][name] for k in range(F + 1, K + 1)
    )
    np.testing.assert_allclose(averaged_parameters(state)[name], expected, rtol=1e-6)
  assert int(state[1].count) == 5


def test_only_optimizer_states_with_an_average_have_one_and_bad_arguments_are_refused():
  params = {"w": jnp.ones(3)}
  assert averaged_parameters(optax.adam(1e-3).init(params)) is None
  with pytest.raises(ValueError, match=r"decay must be in \(0, 1\); got decay=1.0"):
    average_parameters(1.0)
  with pytest.raises(ValueError, match="from_step must be >= 0; got from_step=-1"):
    average_parameters(0.9, from_step=-1)
  average = average_parameters(0.9)
  with pytest.raises(ValueError, match="needs the parameters"):
    average.update(params, average.init(params))

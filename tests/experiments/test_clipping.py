"""The relative gradient clip: its bound against a hand-computed running average."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.trainer.clipping import clip_relative_to_running_norm


def test_spike_is_scaled_to_ratio_times_running_average_of_clipped_norms():
  clip = clip_relative_to_running_norm(max_ratio=2.0, decay=0.5)
  grads = {"w": jnp.zeros(3), "b": jnp.zeros([])}
  state = clip.init(grads)
  # Global norms 1, 2, 100 (spike), 2: the first passes (no average yet); the bound is then
  # 2 x the bias-corrected average of the clipped norms before it.
  averages, out_norms = [], []
  average, count = 0.0, 0
  for norm in (1.0, 2.0, 100.0, 2.0):
    g = {"w": jnp.array([norm, 0.0, 0.0]), "b": jnp.zeros([])}
    out, state = clip.update(g, state)
    out_norm = float(jnp.linalg.norm(out["w"]))
    bound = 2.0 * average / (1 - 0.5**count) if count else np.inf
    expected = min(norm, bound)
    np.testing.assert_allclose(out_norm, expected, rtol=1e-6)
    average, count = 0.5 * average + 0.5 * expected, count + 1
    averages.append(average)
    out_norms.append(out_norm)
  np.testing.assert_allclose(out_norms[:2], [1.0, 2.0], rtol=1e-6)
  # Spike: the average after norms 1, 2 with decay 0.5 is (0.5 * 0.5 * 1 + 0.5 * 2) / (1 - 0.25) = 5/3.
  np.testing.assert_allclose(out_norms[2], 2.0 * 5 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(state.average), averages[-1], rtol=1e-6)
  assert int(state.count) == 4


def test_direction_is_kept():
  clip = clip_relative_to_running_norm(max_ratio=1.5, decay=0.9)
  state = clip.init(None)
  _, state = clip.update({"a": jnp.array([3.0, 4.0])}, state)  # norm 5: the average
  out, _ = clip.update({"a": jnp.array([30.0, -40.0])}, state)  # norm 50 -> 7.5
  np.testing.assert_allclose(np.asarray(out["a"]), [4.5, -6.0], rtol=1e-6)


@pytest.mark.parametrize("ratio, decay", [(1.0, 0.9), (0.5, 0.9), (2.0, 1.0), (2.0, -0.1)])
def test_bad_arguments_are_named(ratio, decay):
  with pytest.raises(ValueError, match="max_ratio|decay"):
    clip_relative_to_running_norm(ratio, decay)

"""deqjax._iteration: damped Picard iteration against its closed-form error recursion."""

import jax.numpy as jnp
import numpy as np
import pytest

import deqjax


@pytest.mark.parametrize("damping", [1.0, 0.5, 0.25])
def test_damped_iteration_contracts_at_its_closed_form_rate(damping):
  # f(z) = a z + x (a per coordinate). z <- z + d (f(z) - z) maps the error e = z - z* to
  # (1 - d (1 - a)) e, so the residual f(z_k) - z_k = (a - 1) e_k shrinks by |1 - d (1 - a)| per step.
  a = jnp.asarray([-0.9, 0.5])
  x = jnp.asarray([1.0, -2.0])
  steps = 6
  _, info = deqjax.fixed_point(
    lambda a, z, x: a * z + x, a, x, solver=deqjax.Iteration(damping), max_iter=steps, tol=0.0, rtol=0.0
  )
  rates = np.abs(1 - damping * (1 - np.asarray(a)))
  expected = [np.linalg.norm(np.asarray(x) * rates**k) for k in range(steps + 1)]  # e_0 = -z*, (a - 1) e_0 = x
  np.testing.assert_allclose(np.asarray(info.trace), expected, rtol=1e-12)
  assert int(info.nstep) == steps and not bool(info.converged)


def test_damping_must_lie_in_the_unit_interval():
  for damping in (0.0, 1.5, -1.0):
    with pytest.raises(ValueError, match=f"damping must be in \\(0, 1\\]; got damping={damping}"):
      deqjax.Iteration(damping)

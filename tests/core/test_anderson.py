"""deqjax._anderson: Anderson acceleration's finite termination on linear maps, and its settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqjax


def test_unregularised_anderson_solves_a_linear_map_in_at_most_n_plus_one_steps():
  # Type-II Anderson with a history of at least n and no ridge is GMRES on z = A z + x in exact
  # arithmetic (Walker & Ni, 2011): the residual vanishes by step n + 1. Plain iteration is far off.
  n = 4
  key_a, key_x = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.float64)
  a = 0.9 * a / jnp.max(jnp.abs(jnp.linalg.eigvals(a)))  # spectral radius 0.9, not symmetric
  x = jax.random.normal(key_x, (n,), jnp.float64)
  f = lambda a, z, x: a @ z + x
  z_star = jnp.linalg.solve(jnp.eye(n) - a, x)
  kw = dict(max_iter=n + 1, tol=0.0, rtol=0.0)
  z, info = deqjax.fixed_point(f, a, x, solver=deqjax.Anderson(history=n + 1, ridge=0.0), **kw)
  np.testing.assert_allclose(z, z_star, rtol=0, atol=1e-10)
  assert float(info.residual) < 1e-10 * float(info.trace[0])
  _, plain = deqjax.fixed_point(f, a, x, solver="iteration", **kw)
  assert float(plain.residual) > 1e-2 * float(plain.trace[0])


def test_a_history_shorter_than_the_dimension_still_converges_but_not_in_n_steps():
  n = 6
  a = jnp.diag(jnp.linspace(-0.8, 0.8, n)).astype(jnp.float64)
  x = jnp.ones((n,), jnp.float64)
  f = lambda a, z, x: a @ z + x
  _, short = deqjax.fixed_point(
    f, a, x, solver=deqjax.Anderson(history=2, ridge=0.0), max_iter=n + 1, tol=0.0, rtol=0.0
  )
  _, full = deqjax.fixed_point(
    f, a, x, solver=deqjax.Anderson(history=n + 1, ridge=0.0), max_iter=n + 1, tol=0.0, rtol=0.0
  )
  assert float(full.residual) < 1e-10 < 1e-2 < float(short.residual)  # finite termination needs m >= n


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(history=0), "history must be an int >= 1; got history=0"),
    (dict(history=True), "history must be an int >= 1; got history=True"),
    (dict(ridge=-1e-3), "ridge must be >= 0; got ridge=-0.001"),
    (dict(beta=0.0), "beta must be > 0; got beta=0.0"),
  ],
)
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    deqjax.Anderson(**kwargs)

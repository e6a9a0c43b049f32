"""`trajectory_steps`: iterates handed out along the forward solve (for the fixed-point correction loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import tanh_layer, tanh_params, unrolled

import deqjax


@pytest.fixture(scope="module")
def case():
  params = tanh_params(jax.random.key(0), width=6, scale=0.9)
  x = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64)
  return params, x


def test_plain_iteration_states_are_the_unrolled_iterates(case):
  params, x = case
  z, info = deqjax.fixed_point(
    tanh_layer, params, x, solver="iteration", max_iter=40, tol=1e-12, batch_axis=0, trajectory_steps=(1, 3, 7)
  )
  assert len(info.states) == 3
  for k, state in zip((1, 3, 7), info.states, strict=True):
    np.testing.assert_allclose(state, unrolled(tanh_layer, params, x, jnp.zeros_like(x), k), rtol=1e-13, atol=1e-15)
  # Without a batch axis (one system) the states keep the state's own shape.
  _, single = deqjax.fixed_point(
    tanh_layer, params, x[0], solver="iteration", max_iter=40, tol=1e-12, trajectory_steps=(2,)
  )
  assert single.nstep.shape == () and single.states[0].shape == (6,)
  np.testing.assert_allclose(single.states[0], unrolled(tanh_layer, params, x[0], jnp.zeros(6), 2), rtol=1e-13)


def test_broyden_states_are_its_iterates(case):
  # The trace holds ||f(z_k) - z_k|| of Broyden's k-th iterate: the kept state must have exactly that residual.
  params, x = case
  z, info = deqjax.fixed_point(tanh_layer, params, x, max_iter=30, tol=1e-10, batch_axis=0, trajectory_steps=(2, 5))
  for k, state in zip((2, 5), info.states, strict=True):
    residual = jnp.linalg.norm(tanh_layer(params, state, x) - state, axis=1)
    np.testing.assert_allclose(residual, info.trace[:, k], rtol=1e-10)
  assert not np.allclose(info.states[0], info.states[1])


def test_a_system_that_stopped_earlier_gives_its_solution(case):
  params, x = case
  z, info = deqjax.fixed_point(tanh_layer, params, x, max_iter=30, tol=1e-10, batch_axis=0, trajectory_steps=(4, 30))
  assert int(jnp.max(info.nstep)) < 30 and bool(jnp.all(info.converged))
  np.testing.assert_array_equal(info.states[1], z)


def test_states_carry_no_gradient_and_leave_z_star_s_alone(case):
  params, x = case
  with_states = lambda p: deqjax.fixed_point(tanh_layer, p, x, batch_axis=0, trajectory_steps=(1, 2))
  plain = lambda p: deqjax.fixed_point(tanh_layer, p, x, batch_axis=0)
  grad_states = jax.grad(lambda p: sum(jnp.sum(s) for s in with_states(p)[1].states))(params)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grad_states))
  g1 = jax.grad(lambda p: jnp.sum(jnp.sin(with_states(p)[0])))(params)
  g2 = jax.grad(lambda p: jnp.sum(jnp.sin(plain(p)[0])))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(with_states(params)[0], plain(params)[0])


def test_root_find_and_pytree_states():
  # g(z) = f(z) - z on a dict state: the first kept iterate of the iteration solver is f(z0).
  f = lambda z: {"a": 0.5 * jnp.tanh(z["b"]) + 1.0, "b": 0.5 * jnp.cos(z["a"])}
  z0 = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
  z, info = deqjax.root_find(
    lambda z: jax.tree.map(jnp.subtract, f(z), z), z0, solver="iteration", tol=1e-12, max_iter=80,
    trajectory_steps=(1,),
  )  # fmt: skip
  first = info.states[0]
  np.testing.assert_allclose(first["a"], f(z0)["a"])
  np.testing.assert_allclose(first["b"], f(z0)["b"])


@pytest.mark.parametrize(
  "steps, error",
  [((0, 2), ValueError), ((2, 2), ValueError), ((3, 31), ValueError), ((1.0,), TypeError), (3, TypeError)],
)
def test_bad_trajectory_steps(case, steps, error):
  params, x = case
  with pytest.raises(error, match="trajectory_steps"):
    deqjax.fixed_point(tanh_layer, params, x, max_iter=30, batch_axis=0, trajectory_steps=steps)

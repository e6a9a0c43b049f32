"""solve_cell's pretraining mode (unrolled layers after settle iterations) against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqjax.nn import solve_cell


def linear(a, z, x):
  return z @ a.T + x


def powers_sum(a, count):
  """sum_{j < count} A^j."""
  return sum((np.linalg.matrix_power(a, j) for j in range(count)), np.zeros_like(a))


@pytest.fixture
def cell():
  a = 0.4 * np.asarray(jax.random.normal(jax.random.key(0), (5, 5)), np.float64) / np.sqrt(5)
  x = np.asarray(jax.random.normal(jax.random.key(1), (3, 5)), np.float64)
  c = np.asarray(jax.random.normal(jax.random.key(2), (3, 5)), np.float64)
  with jax.enable_x64():
    yield jnp.asarray(a), jnp.asarray(x), jnp.asarray(c)


@pytest.mark.parametrize("settle", [0, 3])
def test_settle_iterations_shift_the_start_but_not_the_gradient_path(cell, settle):
  # From z0 = 0, K settle steps then L layers of z -> A z + x give z = sum_{j < K + L} A^j x,
  # but only the L differentiated layers carry gradient: d<c, z>/dx = sum_{j < L} (A^T)^j c.
  a, x, c = cell
  depth = 2

  def loss(x, settle_iters):
    z, info = solve_cell(
      linear, a, x, jnp.zeros_like(x), mode="pretrain", pretrain_depth=depth, settle_iters=settle_iters
    )
    assert info is None
    return jnp.sum(z * c), z

  (_, z), grad_x = jax.value_and_grad(loss, has_aux=True)(x, settle)
  np.testing.assert_allclose(z, x @ powers_sum(np.asarray(a), settle + depth).T, rtol=1e-12)
  np.testing.assert_allclose(grad_x, c @ powers_sum(np.asarray(a), depth), rtol=1e-12)
  # A traced count (the training loop's ramp) gives the same value and gradient.
  (_, z_traced), grad_traced = jax.jit(jax.value_and_grad(loss, has_aux=True))(x, jnp.asarray(settle, jnp.int32))
  np.testing.assert_allclose(z_traced, z, rtol=1e-12)
  np.testing.assert_allclose(grad_traced, grad_x, rtol=1e-12)


def test_settle_iterations_bad_values(cell):
  a, x, _ = cell
  z0 = jnp.zeros_like(x)
  with pytest.raises(ValueError, match=r"settle_iters must be >= 0; got -1"):
    solve_cell(linear, a, x, z0, mode="pretrain", settle_iters=-1)
  with pytest.raises(TypeError, match=r"settle_iters must be an int or a scalar integer array; got 1.5"):
    solve_cell(linear, a, x, z0, mode="pretrain", settle_iters=1.5)
  with pytest.raises(ValueError, match=r"settle_iters is a pretraining option; got settle_iters=2 with mode='deq'"):
    solve_cell(linear, a, x, z0, mode="deq", settle_iters=2)

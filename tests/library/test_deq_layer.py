"""solve_cell unrolled (pretraining: unrolled layers after settle iterations) against closed forms; sub-sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqjax
from deqjax.nn import solve_cell
from deqjax.nn.deq_layer import DEQSettings, cell_output


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
    z, info = solve_cell(linear, a, x, jnp.zeros_like(x), unroll_depth=depth, settle_iters=settle_iters)
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
    solve_cell(linear, a, x, z0, unroll_depth=2, settle_iters=-1)
  with pytest.raises(TypeError, match=r"settle_iters must be an int or a scalar integer array; got 1.5"):
    solve_cell(linear, a, x, z0, unroll_depth=2, settle_iters=1.5)
  with pytest.raises(ValueError, match=r"option of the unrolled cell; got settle_iters=2 with unroll_depth=None"):
    solve_cell(linear, a, x, z0, settle_iters=2)


def test_sub_sequences_split_a_segment_and_join_their_solves():
  from deqjax.nn.deq_layer import CellExtras, join_sub_sequences, sub_sequences

  assert sub_sequences(7, 3) == [(0, 3), (3, 6), (6, 7)]
  assert sub_sequences(5, 0) == [(0, 5)] == sub_sequences(5, 9)
  for bad in (-1, 2.0, True):
    with pytest.raises(ValueError, match="subseq_len must be an int >= 0"):
      sub_sequences(5, bad)

  def part(length, nstep, residual, status, trace, jac):
    z = {"h": jnp.full((2, length, 3), float(length))}
    info = deqjax.SolveInfo(
      nstep=jnp.asarray(nstep), residual=jnp.asarray(residual), rel_residual=2 * jnp.asarray(residual),
      converged=jnp.asarray(status) == 0, status=jnp.asarray(status), trace=jnp.asarray(trace),
    )  # fmt: skip
    return z, z["h"][..., :1], info, CellExtras(jnp.asarray(jac), (z["h"][..., 1:2] + 1,))

  first = part(2, [3, 5], [1e-4, 2e-3], [0, 1], [[1.0, 0.5, -1.0], [1.0, 0.8, 0.7]], [1.0, 4.0])
  second = part(6, [4, 1], [3e-4, 1e-5], [0, 0], [[2.0, 0.1, 0.01], [0.9, -1.0, -1.0]], [3.0, 0.0])
  z, out, info, extras = join_sub_sequences([first, second])
  jac = extras.jac_loss
  (correction,) = extras.corrections
  np.testing.assert_array_equal(correction[0, :, 0], [3.0] * 2 + [7.0] * 6)
  assert z["h"].shape == (2, 8, 3) and out.shape == (2, 8, 1)
  np.testing.assert_array_equal(z["h"][0, :, 0], [2.0] * 2 + [6.0] * 6)
  np.testing.assert_array_equal(info.nstep, [7, 6])
  np.testing.assert_allclose(info.residual, [3e-4, 2e-3])
  np.testing.assert_allclose(info.rel_residual, [6e-4, 4e-3])
  np.testing.assert_array_equal(info.converged, [True, False])
  np.testing.assert_array_equal(info.status, [0, 1])
  np.testing.assert_allclose(info.trace, [[2.0, 0.5, 0.01], [1.0, 0.8, 0.7]])
  np.testing.assert_allclose(jac, [(2 * 1.0 + 6 * 3.0) / 8, (2 * 4.0 + 0.0) / 8])
  assert join_sub_sequences([first]) is first


def test_per_device_stage_refuses_what_it_cannot_split(cell):
  a, x, c = cell
  z0 = jnp.zeros((4, 5))
  inputs = {"x": jnp.concatenate([x, x[:1]]), "c": c[0]}
  stage = lambda z0, inputs, **kw: cell_output(
    lambda a, z, i: linear(a, z, i["x"]), a, inputs, z0, DEQSettings(), unrolled=False, training=False, **kw
  )
  with jax.set_mesh(jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))):
    with pytest.raises(ValueError, match=r"z0 \(3, 5\): its batch axis \(0\) does not split over the mesh's 4 devices"):
      stage(jnp.zeros((3, 5)), inputs, shared_inputs=("c",))
    with pytest.raises(
      ValueError, match=r"shared_inputs must name keys of the inputs dict; got \('r_k',\), keys \['c', 'x'\]"
    ):
      stage(z0, inputs, shared_inputs=("r_k",))
    z, _, info, _ = stage(z0, inputs, shared_inputs=("c",), tol=1e-12, rtol=0.0, max_iter=100)  # c: replicated
  np.testing.assert_allclose(z, np.linalg.solve(np.eye(5) - np.asarray(a), np.asarray(inputs["x"]).T).T, atol=1e-10)
  assert info.nstep.shape == (4,) and bool(jnp.all(info.converged))

"""deqjax._krylov: GMRES and BiCGStab adjoints against closed forms, per sample, capped and failing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import contractive_matrix, linear, tanh_layer, tanh_params

import deqjax
from deqjax import Status

KRYLOV = ["gmres", "bicgstab"]
TIGHT = dict(tol=1e-13, max_iter=100, backward_tol=1e-12, backward_max_iter=100)


def _adjoint(f, params, x, c, **kw):
  """(dl/dx, backward stats) for l = c . z*(x); for f = a z + x, dl/dx is the adjoint w itself."""
  probe = deqjax.backward_probe(None if x.ndim == 1 else x.shape[0])
  loss = lambda x, q: jnp.sum(c * deqjax.fixed_point(f, params, x, backward_probe=q, **kw)[0])
  return jax.grad(loss, argnums=(0, 1))(x, probe)


@pytest.mark.parametrize("solver", KRYLOV)
def test_linear_adjoint_matches_the_closed_form(solver):
  # w = (I - A^T)^-1 c. GMRES minimises the residual over the Krylov space: exact after n products.
  n = 8
  a = contractive_matrix(jax.random.key(0), n, radius=0.9)
  x = jax.random.normal(jax.random.key(1), (n,), jnp.float64)
  c = jax.random.normal(jax.random.key(2), (n,), jnp.float64)
  w, stats = _adjoint(linear, a, x, c, backward_solver=solver, **TIGHT)
  np.testing.assert_allclose(w, jnp.linalg.solve(jnp.eye(n) - a.T, c), atol=1e-11)
  assert float(stats.status) == Status.CONVERGED and float(stats.residual) < 1e-12
  np.testing.assert_allclose(stats.residual, jnp.linalg.norm(c + a.T @ w - w), rtol=1e-5, atol=1e-15)
  if solver == "gmres":
    assert float(stats.nstep) <= n
  else:
    assert float(stats.nstep) % 2 == 0 and float(stats.nstep) <= 4 * n  # two products an iteration
  # Restarted every 3 columns, GMRES still converges (more products).
  w3, stats3 = _adjoint(linear, a, x, c, backward_solver=deqjax.GMRES(restart=3), **TIGHT)
  np.testing.assert_allclose(w3, w, atol=1e-10)
  assert float(stats3.converged) == 1.0 and float(stats3.nstep) > n


@pytest.mark.parametrize("solver", KRYLOV)
def test_per_sample_systems_stop_on_their_own_and_match_broyden_on_a_nonlinear_layer(solver):
  params = tanh_params(jax.random.key(0), scale=0.9)
  x = jax.random.normal(jax.random.key(1), (4, 6), jnp.float64)
  c = jax.random.normal(jax.random.key(2), (4, 6), jnp.float64)
  kw = dict(batch_axis=0, **TIGHT)
  w, stats = _adjoint(tanh_layer, params, x, c, backward_solver=solver, **kw)
  w_broyden, _ = _adjoint(tanh_layer, params, x, c, **kw)
  np.testing.assert_allclose(w, w_broyden, atol=1e-10)
  assert stats.nstep.shape == (4,) and bool(jnp.all(stats.converged == 1.0))
  assert float(jnp.max(stats.residual)) < 1e-12
  # A sample that starts at its solution (c = 0: w = 0) takes no products; the others do.
  c0 = c.at[2].set(0.0)
  _, stats0 = _adjoint(tanh_layer, params, x, c0, backward_solver=solver, **kw)
  assert float(stats0.nstep[2]) == 0 and float(jnp.min(stats0.nstep.at[2].set(99))) >= 2


@pytest.mark.parametrize("solver", KRYLOV)
def test_the_cap_is_reported_with_the_true_residual_of_the_returned_adjoint(solver):
  n = 12
  a = contractive_matrix(jax.random.key(3), n, radius=0.95)
  x = jnp.ones((n,), jnp.float64)
  c = jax.random.normal(jax.random.key(4), (n,), jnp.float64)
  w, stats = _adjoint(linear, a, x, c, backward_solver=solver, tol=1e-13, backward_tol=1e-14, backward_max_iter=3)
  assert float(stats.status) == Status.MAX_STEPS and float(stats.converged) == 0.0
  assert float(stats.nstep) == (3 if solver == "gmres" else 2)
  true = jnp.linalg.norm(c + a.T @ w - w)
  np.testing.assert_allclose(stats.residual, true, rtol=1e-5)
  np.testing.assert_allclose(stats.rel_residual, true / jnp.linalg.norm(c + a.T @ w), rtol=1e-5)
  # Three GMRES products minimise the residual over span{r0, A r0, A^2 r0}: no worse than 3 Picard steps.
  if solver == "gmres":
    picard = c
    for _ in range(3):
      picard = c + a.T @ picard
    assert float(true) <= float(jnp.linalg.norm(c + a.T @ picard - picard)) * (1 + 1e-9)


def test_root_find_and_a_non_finite_adjoint():
  # Root of g(z) = A z - z + x: the Krylov adjoint gives fixed_point's gradient for f = A z + x.
  n = 6
  a = contractive_matrix(jax.random.key(5), n)
  x = jax.random.normal(jax.random.key(6), (n,), jnp.float64)
  c = jax.random.normal(jax.random.key(7), (n,), jnp.float64)
  for solver in KRYLOV:
    kw = dict(tol=1e-13, backward_solver=solver, backward_tol=1e-13)
    loss = lambda x, kw=kw: c @ deqjax.root_find(lambda z: a @ z - z + x, jnp.zeros(n), **kw)[0]
    np.testing.assert_allclose(jax.grad(loss)(x), jnp.linalg.solve(jnp.eye(n) - a.T, c), atol=1e-11)
  # f(z) = x + cbrt(z - x) has z* = x with an infinite Jacobian there: the adjoint is NaN, never a
  # finite wrong gradient, and its status says so.
  f = lambda _, z, x: x + jnp.cbrt(z - x)
  for solver in KRYLOV:
    grad, stats = _adjoint(f, None, x, c, z0=x, backward_solver=solver)
    assert bool(jnp.all(jnp.isnan(grad))) and float(stats.status) == Status.NONFINITE


def test_krylov_solvers_are_for_the_adjoint_only_and_checked():
  f = lambda a, z, x: jnp.tanh(a * z + x)
  with pytest.raises(ValueError, match="solver='gmres' solves linear systems only: pass it as backward_solver"):
    deqjax.fixed_point(f, 0.5, jnp.ones(3), solver="gmres")
  with pytest.raises(ValueError, match=r"solver=BiCGStab\(...\) solves linear systems only"):
    deqjax.root_find(lambda z: -z, jnp.ones(3), solver=deqjax.BiCGStab())
  with pytest.raises(ValueError, match="GMRES restart must be an int >= 1; got restart=0"):
    deqjax.GMRES(restart=0)
  with pytest.raises(ValueError, match=r"Unknown backward_solver='cg'; expected one of \[.*'bicgstab', 'gmres'\]"):
    deqjax.fixed_point(f, 0.5, jnp.ones(3), backward_solver="cg")
  # GMRES(restart=m) keeps m + 1 basis vectors and a Hessenberg matrix: [1, 41, 4096] and [1, 41, 40]
  # float32, 678,304 bytes (the forward Broyden with max_iter 5: 131,188).
  x = jnp.ones(4096, jnp.float32)
  kw = dict(max_iter=5, backward_solver=deqjax.GMRES(40))
  deqjax.fixed_point(f, 0.5, x, max_buffer_bytes=678_304, **kw)
  with pytest.raises(
    ValueError, match=r"backward solver's buffers would take 678,304 bytes \(GMRES, backward_max_iter"
  ):
    deqjax.fixed_point(f, 0.5, x, max_buffer_bytes=678_303, **kw)

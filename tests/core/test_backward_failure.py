"""`backward_failure`: what the implicit backward does with samples whose adjoint solve did not converge.

Per-sample linear maps z = A_i z + x_i in float64: the adjoint of l = sum(c * z*) is the gradient
with respect to x_i itself, w_i = (I - A_i^T)^-1 c_i when solved. Sample 0 has A = 0 (its adjoint
converges at once); sample 1 has spectral radius 0.95 and two Picard steps cannot solve it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import contractive_matrix

import deqjax
from deqjax import Status

N = 5


def batched_linear(a, z, x):
  return jnp.einsum("bij,bj->bi", a, z) + x


@pytest.fixture(scope="module")
def problem():
  a = jnp.stack([jnp.zeros((N, N)), contractive_matrix(jax.random.key(0), N, radius=0.95)])
  x = jax.random.normal(jax.random.key(1), (2, N), jnp.float64)
  c = jax.random.normal(jax.random.key(2), (2, N), jnp.float64)
  return a, x, c


def x_gradient(problem, solve=deqjax.fixed_point, **options):
  """(dl/dx `[2, N]`, backward stats) with a forward solved exactly and a 2-step Picard adjoint."""
  a, x, c = problem
  kw = dict(max_iter=60, tol=1e-13, batch_axis=0, backward_solver="iteration", backward_max_iter=2)
  kw.update(backward_tol=1e-12, **options)
  if solve is deqjax.root_find:  # the same problem as a root: g(z) = f(z) - z
    run = lambda x, q: solve(lambda z: batched_linear(a, z, x) - z, jnp.zeros_like(x), backward_probe=q, **kw)
  else:
    run = lambda x, q: solve(batched_linear, a, x, backward_probe=q, **kw)
  loss = lambda x, q: jnp.sum(c * run(x, q)[0])
  return jax.grad(loss, argnums=(0, 1))(x, deqjax.backward_probe(2))


def phantom_closed_form(a, c, steps, lam):
  """lam sum_{j<k} ((1 - lam) I + lam A^T)^j c: the k damped steps' adjoint of a linear map."""
  m = (1 - lam) * np.eye(N) + lam * np.asarray(a).T
  return lam * sum(np.linalg.matrix_power(m, j) @ np.asarray(c) for j in range(steps))


def test_the_solved_sample_keeps_its_adjoint_and_every_policy_reports_the_failure(problem):
  a, _, c = problem
  for policy in ("keep", "drop", "phantom"):
    w, stats = x_gradient(problem, backward_failure=policy)
    np.testing.assert_allclose(w[0], c[0], atol=1e-14)  # A = 0: w = c
    assert [float(s) for s in stats.status] == [Status.CONVERGED, Status.MAX_STEPS]
    assert float(stats.nstep[1]) == 2
  # "keep" (the default) returns the capped solve's best iterate: of c, c + A^T c and c + A^T c + (A^T)^2 c
  # (two Picard steps from c), the one with the lowest residual ||A^T w + c - w||.
  w, _ = x_gradient(problem)
  a1, c1 = np.asarray(a[1]), np.asarray(c[1])
  iterates = [c1, c1 + a1.T @ c1, c1 + a1.T @ c1 + a1.T @ a1.T @ c1]
  best = min(iterates, key=lambda v: np.linalg.norm(a1.T @ v + c1 - v))
  np.testing.assert_allclose(w[1], best, rtol=1e-12)
  exact = np.linalg.solve(np.eye(N) - a1.T, c1)
  assert np.linalg.norm(w[1] - exact) > 0.1 * np.linalg.norm(exact)  # far from solved: the case the policy is for


def test_drop_zeroes_the_failed_sample_only(problem):
  _, _, c = problem
  w, _ = x_gradient(problem, backward_failure="drop")
  np.testing.assert_allclose(w[0], c[0], atol=1e-14)
  np.testing.assert_array_equal(w[1], np.zeros(N))


@pytest.mark.parametrize("steps, lam", [(1, 1.0), (3, 0.5)])
def test_phantom_fallback_is_the_phantom_gradient(problem, steps, lam):
  a, _, c = problem
  w, _ = x_gradient(problem, backward_failure="phantom", phantom_steps=steps, phantom_damping=lam)
  np.testing.assert_allclose(w[0], c[0], atol=1e-14)
  np.testing.assert_allclose(w[1], phantom_closed_form(a[1], c[1], steps, lam), rtol=1e-12)
  # For a map linear in z it is exactly what backward="phantom" gives that sample.
  w_phantom, _ = x_gradient(problem, backward="phantom", phantom_steps=steps, phantom_damping=lam)
  np.testing.assert_allclose(w[1], w_phantom[1], rtol=1e-12)


def test_root_find_has_the_same_policies(problem):
  a, _, c = problem
  w_drop, stats = x_gradient(problem, deqjax.root_find, backward_failure="drop")
  assert [float(s) for s in stats.status] == [Status.CONVERGED, Status.MAX_STEPS]
  np.testing.assert_array_equal(w_drop[1], np.zeros(N))
  np.testing.assert_allclose(w_drop[0], c[0], atol=1e-13)
  w, _ = x_gradient(problem, deqjax.root_find, backward_failure="phantom", phantom_steps=3, phantom_damping=0.5)
  np.testing.assert_allclose(w[1], phantom_closed_form(a[1], c[1], 3, 0.5), rtol=1e-12)


def test_a_diverged_adjoint_is_nan_when_kept_and_replaced_otherwise():
  # J = 3 I: the adjoint iteration w <- 3 w + c runs away and diverges (ratio 10 over its start).
  f = lambda s, z, x: s * z + x
  x, c = jnp.ones((1, 3)), jnp.ones((1, 3))
  kw = dict(max_iter=5, batch_axis=0, backward_solver="iteration", backward_max_iter=20, divergence_ratio=10.0)

  def grad(**options):
    loss = lambda x, q: jnp.sum(c * deqjax.fixed_point(f, 3.0, x, backward_probe=q, **kw, **options)[0])
    return jax.grad(loss, argnums=(0, 1))(x, deqjax.backward_probe(1))

  w, stats = grad()
  assert float(stats.status[0]) == Status.DIVERGED and bool(jnp.all(jnp.isnan(w)))
  w, _ = grad(backward_failure="drop")
  np.testing.assert_array_equal(w, np.zeros((1, 3)))
  w, _ = grad(backward_failure="phantom")
  np.testing.assert_array_equal(w, c)  # one undamped step: w = c


def test_bad_policies_are_value_errors(problem):
  a, x, _ = problem
  with pytest.raises(ValueError, match="backward_failure='skip'"):
    deqjax.fixed_point(batched_linear, a, x, batch_axis=0, backward_failure="skip")
  with pytest.raises(ValueError, match="backward_failure='drop'.*backward='phantom'"):
    deqjax.fixed_point(batched_linear, a, x, batch_axis=0, backward="phantom", backward_failure="drop")
  with pytest.raises(ValueError, match="backward_failure"):
    deqjax.check_backward_options("implicit", 1, 1.0, "never")

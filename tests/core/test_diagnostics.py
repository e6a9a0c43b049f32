"""deqjax._diagnostics: the Hutchinson Jacobian penalty and the spectral radius against exact values."""

import jax
import jax.numpy as jnp
import numpy as np

import deqjax


def batched_linear(a, z, x):
  return z @ a.T + x


def test_hutchinson_is_exact_in_expectation_and_differentiable():
  n = 6
  a = jax.random.normal(jax.random.key(0), (n, n))
  z = jnp.zeros((n,))
  key = jax.random.key(1)
  # The estimate is the mean of ||eps^T A||^2 over its probe vectors: recompute it by hand.
  est = deqjax.jacobian_frobenius_sq(batched_linear, a, z, z, key, num_samples=3)
  eps = jnp.stack([jax.random.normal(k, (1, n)) for k in jax.random.split(key, 3)])[:, 0]
  np.testing.assert_allclose(est, jnp.mean(jnp.sum((eps @ a) ** 2, axis=1)), rtol=1e-12)
  # Unbiased: with 20000 probes the mean is within 4 standard errors of ||A||_F^2.
  many = deqjax.jacobian_frobenius_sq(batched_linear, a, z, z, jax.random.key(2), num_samples=20000)
  exact = jnp.sum(a**2)
  std_err = jnp.sqrt(2 * jnp.sum((a @ a.T) ** 2) / 20000)  # Var ||eps^T A||^2 = 2 ||A A^T||_F^2
  assert abs(float(many - exact)) < 4 * float(std_err)
  # Differentiable in the parameters: d/dA mean ||eps^T A||^2 = 2 mean eps eps^T A.
  grad = jax.grad(lambda a: deqjax.jacobian_frobenius_sq(batched_linear, a, z, z, key, num_samples=3))(a)
  np.testing.assert_allclose(grad, 2 * eps.T @ eps @ a / 3, rtol=1e-10)


def test_hutchinson_per_sample():
  scales = jnp.array([0.5, 2.0])[:, None]
  f = lambda s, z, x: s * z + x
  z = jnp.ones((2, 4))
  est = deqjax.jacobian_frobenius_sq(f, scales, z, z, jax.random.key(3), num_samples=4000, batch_axis=0)
  # J = s I_4: ||J||_F^2 = 4 s^2 per sample, relative standard error sqrt(2 / (4 * 4000)).
  np.testing.assert_allclose(est, 4 * scales[:, 0] ** 2, rtol=5 * (2 / 16000) ** 0.5)


def test_spectral_radius_real_and_complex_dominant_eigenvalues():
  n = 6
  q = jax.random.normal(jax.random.key(4), (n, n))
  real = q @ jnp.diag(jnp.array([0.9, -0.5, 0.3, 0.2, 0.1, 0.05])) @ jnp.linalg.inv(q)
  theta = 0.7
  rotation = 0.8 * jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
  block = jnp.zeros((n, n)).at[:2, :2].set(rotation).at[2:, 2:].set(jnp.diag(jnp.array([0.4, 0.3, 0.2, 0.1])))
  complex_pair = q @ block @ jnp.linalg.inv(q)
  z = jnp.zeros((n,))
  for a, radius in [(real, 0.9), (complex_pair, 0.8)]:
    assert abs(float(jnp.max(jnp.abs(jnp.linalg.eigvals(a)))) - radius) < 1e-9
    est = deqjax.spectral_radius(batched_linear, a, z, z, jax.random.key(5), num_iter=400)
    np.testing.assert_allclose(est, radius, rtol=2e-2)


def test_spectral_radius_per_sample():
  f = lambda s, z, x: s * jnp.tanh(z) + x
  s = jnp.array([0.3, 0.7])[:, None]
  z = jnp.zeros((2, 5))
  est = deqjax.spectral_radius(f, s, z, z, jax.random.key(6), num_iter=20, batch_axis=0)
  np.testing.assert_allclose(est, [0.3, 0.7], rtol=1e-10)  # J = s I at z = 0

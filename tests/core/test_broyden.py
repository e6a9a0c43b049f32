"""deqjax._broyden: the quasi-Newton solver's steps, its repelling fixed points and its buffer layouts."""

import jax
import jax.numpy as jnp
import numpy as np
from core_cases import contractive_matrix, linear, tanh_layer, tanh_params

import deqjax
from deqjax import Status


def test_broyden_solves_linear_system_in_few_steps():
  # Good Broyden terminates on an n-dimensional linear problem within 2n steps.
  n = 5
  a = contractive_matrix(jax.random.key(3), n, radius=0.95)
  x = jnp.ones((n,), jnp.float64)
  _, info = deqjax.fixed_point(linear, a, x, max_iter=50, tol=1e-11, rtol=0.0)
  assert bool(info.converged)
  assert int(info.nstep) <= 2 * n
  _, info_iter = deqjax.fixed_point(linear, a, x, solver="iteration", max_iter=50, tol=1e-11, rtol=0.0)
  assert not bool(info_iter.converged)  # radius 0.95: 50 plain steps are not enough


# ---------------------------------------------------------------------------
# A repelling fixed point, z0's gradient
# ---------------------------------------------------------------------------
def test_broyden_finds_repelling_fixed_point_and_z0_gets_zero_gradient():
  # z = a z + b with a = 2: plain iteration runs away, Broyden lands on b / (1 - a).
  a = jnp.array([2.0, 3.0, 1.5])
  b = jnp.array([1.0, -2.0, 0.5])
  f = lambda a, z, b: a * z + b
  z0 = jnp.array([0.1, 0.2, 0.3])
  kw = dict(max_iter=30, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  z, info = deqjax.fixed_point(f, a, b, z0, **kw)
  np.testing.assert_allclose(z, b / (1 - a), atol=1e-12)
  assert bool(info.converged)
  _, info_iter = deqjax.fixed_point(f, a, b, z0, solver="iteration", max_iter=100, tol=1e-12, rtol=0.0)
  assert int(info_iter.status) == Status.DIVERGED

  loss = lambda a, b, z0: jnp.sum(deqjax.fixed_point(f, a, b, z0, **kw)[0] ** 2)
  g_a, g_b, g_z0 = jax.grad(loss, argnums=(0, 1, 2))(a, b, z0)
  zs = b / (1 - a)
  np.testing.assert_allclose(g_b, 2 * zs / (1 - a), rtol=1e-10)  # dz*/db = 1 / (1 - a)
  np.testing.assert_allclose(g_a, 2 * zs * b / (1 - a) ** 2, rtol=1e-10)  # dz*/da = b / (1 - a)^2
  assert bool(jnp.all(g_z0 == 0.0))


def test_compact_and_ring_broyden_take_the_same_steps():
  # Full history uses the compact form U = M S, V = L D; a limited history stores u, v in a
  # ring. Until the ring wraps, both are the same algorithm and must give the same iterates.
  params = tanh_params(jax.random.key(24), width=10, scale=0.9)
  x = jax.random.normal(jax.random.key(25), (3, 10))
  kw = dict(max_iter=14, tol=0.0, rtol=0.0, batch_axis=0)
  z_full, info_full = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(), **kw)
  z_ring, info_ring = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(history=10), **kw)
  # Updates 1..10 fill the ring; update 11 still sees the pair it overwrites (the direction is
  # formed from the old buffers plus the new pair), so iterates 0..12 agree and 13 differs.
  np.testing.assert_allclose(info_full.trace[:, :13], info_ring.trace[:, :13], rtol=1e-9, atol=1e-14)
  assert not np.allclose(info_full.trace[:, 13], info_ring.trace[:, 13], rtol=1e-9)
  assert float(jnp.max(info_full.residual)) < 1e-5 * float(jnp.min(info_full.trace[:, 0]))
  # The ring keeps converging after it wraps.
  _, info_small = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(history=3), **kw)
  assert float(jnp.max(info_small.residual)) < 1e-4 * float(jnp.min(info_small.trace[:, 0]))

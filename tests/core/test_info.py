"""deqjax._info: the backward solve's statistics through the probe."""

import jax
import jax.numpy as jnp
from core_cases import tanh_layer, tanh_params

import deqjax
from deqjax import Status


def test_backward_statistics_arrive_through_the_probe():
  params = tanh_params(jax.random.key(17))
  x = jax.random.normal(jax.random.key(18), (4, 6))

  def loss(params, probe, **kw):
    z, _ = deqjax.fixed_point(tanh_layer, params, x, batch_axis=0, backward_probe=probe, **kw)
    return jnp.sum(z**2)

  probe = deqjax.backward_probe(4)
  _, stats = jax.grad(loss, argnums=(0, 1))(params, probe, backward_tol=1e-10, backward_rtol=0.0)
  assert stats.nstep.shape == (4,)
  assert bool(jnp.all(stats.converged == 1.0)) and bool(jnp.all(stats.status == Status.CONVERGED))
  assert bool(jnp.all(stats.nstep > 0)) and bool(jnp.all(stats.residual < 1e-10))
  _, stats = jax.grad(loss, argnums=(0, 1))(params, probe, backward_max_iter=2, backward_tol=0.0, backward_rtol=0.0)
  assert bool(jnp.all(stats.nstep == 2)) and bool(jnp.all(stats.status == Status.MAX_STEPS))
  assert bool(jnp.all(stats.converged == 0.0)) and bool(jnp.all(stats.residual > 0))

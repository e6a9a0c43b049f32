"""Training aids at an equilibrium: Jacobian regularisation and spectral radius.

Both are matrix-free (one VJP or JVP per probe vector) and work on pytree
states, per sample when `batch_axis` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from deqjax import _validation as checks
from deqjax._driver import row_norm
from deqjax._flat import make_spec


def jacobian_frobenius_sq(
  f: Callable[[Any, Any, Any], Any],
  params: Any,
  z: Any,
  x: Any,
  key: jax.Array,
  *,
  num_samples: int = 1,
  batch_axis: int | None = None,
) -> jax.Array:
  r"""Hutchinson estimate of ||df/dz||_F^2 at z, differentiable in params and x.

  .. math::
     \|J\|_F^2 = \operatorname{tr}(J^\top J) = \mathbb{E}_\epsilon \|\epsilon^\top J\|_2^2,
     \qquad \epsilon \sim \mathcal{N}(0, I),

  with one VJP per sample of epsilon. For the Jacobian regulariser of Bai et
  al. (2021) add `gamma * estimate / n` to the loss, n the state size per
  system. With a batch axis, `J` is the per-sample block.

  Args:
    f: `f(params, z, x) -> z_next`.
    params, z, x: the point (usually z = stop_gradient(z*)).
    key: PRNG key for the probe vectors.
    num_samples: number of Gaussian probe vectors averaged (>= 1).
    batch_axis: None, or the per-sample axis of z.

  Returns:
    The estimate: a scalar, or `[batch]` with a batch axis (float32, or
    float64 for float64 states).
  """
  num_samples = checks.check_max_iter(num_samples, "num_samples")
  spec = make_spec(z, checks.check_batch_axis(batch_axis), "z")
  _, vjp = jax.vjp(lambda zz: f(params, zz, x), z)

  def one(sample_key):
    eps_flat = jax.random.normal(sample_key, (spec.batch_size, spec.n), spec.work_dtype)
    (eps_jac,) = vjp(spec.unflatten(eps_flat))
    return jnp.square(row_norm(spec.flatten(eps_jac)))

  estimate = jnp.mean(lax.map(one, jax.random.split(key, num_samples)), axis=0)
  return estimate if batch_axis is not None else estimate[0]


def spectral_radius(
  f: Callable[[Any, Any, Any], Any],
  params: Any,
  z: Any,
  x: Any,
  key: jax.Array,
  *,
  num_iter: int = 50,
  batch_axis: int | None = None,
) -> jax.Array:
  """Power-method estimate of the spectral radius of df/dz at z.

  Iterates v <- J v / ||J v|| from a random v (one JVP per step, the
  linearisation computed once) and returns the geometric mean of the growth
  factors ||J v|| over the second half of the iterations. For a dominant
  real eigenvalue this is its modulus; for a dominant complex pair, whose
  single-step growth oscillates, the geometric mean still converges to the
  common modulus. A DEQ with radius >= 1 at z* has no stable equilibrium
  for plain iteration and an ill-conditioned backward solve.

  Args:
    f: `f(params, z, x) -> z_next`.
    params, z, x: the point (gradients are not taken through this estimate).
    key: PRNG key for the starting vector.
    num_iter: power iterations (>= 2).
    batch_axis: None, or the per-sample axis of z.

  Returns:
    A scalar, or `[batch]` with a batch axis.
  """
  num_iter = checks.check_max_iter(num_iter, "num_iter")
  if num_iter < 2:
    raise ValueError(f"num_iter must be >= 2; got num_iter={num_iter}.")
  spec = make_spec(z, checks.check_batch_axis(batch_axis), "z")
  params, z, x = lax.stop_gradient((params, z, x))
  _, jvp = jax.linearize(lambda zz: f(params, zz, x), z)
  v0 = jax.random.normal(key, (spec.batch_size, spec.n), spec.work_dtype)
  v0 = v0 / row_norm(v0)[:, None]

  def step(v, _):
    jv = spec.flatten(jvp(spec.unflatten(v)))
    growth = row_norm(jv)
    safe = jnp.where(growth > 0, growth, 1.0)
    return jv / safe[:, None], jnp.log(jnp.maximum(growth, jnp.finfo(growth.dtype).tiny))

  _, log_growth = lax.scan(step, v0, None, length=num_iter)
  radius = jnp.exp(jnp.mean(log_growth[num_iter // 2 :], axis=0))
  return radius if batch_axis is not None else radius[0]

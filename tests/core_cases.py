"""Small fixed-point problems shared by the core tests (closed forms known)."""

import jax
import jax.numpy as jnp

SOLVERS = ["broyden", "anderson", "iteration"]


def contractive_matrix(key, n, radius=0.6, dtype=jnp.float64):
  a = jax.random.normal(key, (n, n), dtype)
  return radius * a / jnp.max(jnp.abs(jnp.linalg.eigvals(a)))


def linear(a, z, x):
  return a @ z + x


def tanh_layer(p, z, x):
  h = z @ p["w"] + x @ p["u"]
  return jnp.tanh(h + p["b"].reshape((1,) * (h.ndim - 1) + (-1,)))


def tanh_params(key, width=6, scale=0.5):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "w": scale * jax.random.normal(k1, (width, width), jnp.float64) / width**0.5,
    "u": jax.random.normal(k2, (width, width), jnp.float64) / width**0.5,
    "b": 0.1 * jax.random.normal(k3, (width,), jnp.float64),
  }


def unrolled(f, params, x, z0, steps):
  return jax.lax.fori_loop(0, steps, lambda _, z: f(params, z, x), z0)

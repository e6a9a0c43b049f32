"""The benchmark problems shared by the solver benchmarks, and what is timed on them."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import deqjax


# ---------------------------------------------------------------------------
# The cells
# ---------------------------------------------------------------------------
def tanh_case(key):
  batch, width = 64, 512
  k1, k2, k3, k4 = jax.random.split(key, 4)
  params = {
    "w": jax.random.normal(k1, (width, width)) * (0.9 / width**0.5),
    "u": jax.random.normal(k2, (width, width)) / width**0.5,
    "b": jax.random.normal(k3, (width,)) * 0.1,
  }
  x = jax.random.normal(k4, (batch, width))

  def f(p, z, x):
    return jnp.tanh(z @ p["w"] + x @ p["u"] + p["b"])

  return f, params, x, jnp.zeros_like(x)


def _layer_norm(h):
  mean = jnp.mean(h, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
  return (h - mean) * jax.lax.rsqrt(var + 1e-5)


def transformer_case(key):
  batch, length, d, heads, d_inner = 4, 150, 256, 8, 1024
  ks = jax.random.split(key, 6)
  params = {
    "qkv": jax.random.normal(ks[0], (d, 3 * d)) / d**0.5,
    "o": jax.random.normal(ks[1], (d, d)) / d**0.5,
    "ff1": jax.random.normal(ks[2], (d, d_inner)) / d**0.5,
    "b1": jnp.zeros((d_inner,)),
    "ff2": jax.random.normal(ks[3], (d_inner, d)) / d_inner**0.5,
    "b2": jnp.zeros((d,)),
  }
  injection = jax.random.normal(ks[4], (batch, length, 3 * d))
  mask = jnp.tril(jnp.ones((length, length), bool))

  def f(p, z, u):
    qkv = z @ p["qkv"] + u
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, heads, d // heads), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / (d // heads) ** 0.5
    scores = jnp.where(mask, scores, -1e30)
    attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(batch, length, d)
    h = _layer_norm(z + attn @ p["o"])
    return _layer_norm(h + jax.nn.relu(h @ p["ff1"] + p["b1"]) @ p["ff2"] + p["b2"])

  return f, params, injection, jnp.zeros((batch, length, d))


def big_state_case(key):
  batch, length, d = 4, 256, 1024
  k1, k2 = jax.random.split(key)
  params = {"scale": jax.random.uniform(k1, (d,), minval=0.2, maxval=0.8)}
  x = jax.random.normal(k2, (batch, length, d))

  def f(p, z, x):
    return jnp.tanh(p["scale"] * jnp.roll(z, 1, axis=1) + x)

  return f, params, x, jnp.zeros_like(x)


CASES = {
  "a": ("tanh layer 64x512", tanh_case),
  "b": ("transformer cell 4x150x256", transformer_case),
  "c": ("1e6-unknown state 4x256x1024", big_state_case),
}


# ---------------------------------------------------------------------------
# What is timed
# ---------------------------------------------------------------------------
def deq_step(f, k, batch_axis):
  def loss(params, x, z0, probe):
    z, info = deqjax.fixed_point(
      f,
      params,
      x,
      z0,
      solver="broyden",
      max_iter=k,
      tol=0.0,
      rtol=0.0,
      batch_axis=batch_axis,
      backward_max_iter=k,
      backward_tol=0.0,
      backward_rtol=0.0,
      backward_probe=probe,
    )
    return jnp.sum(z * jnp.cos(z)), info

  grad = jax.grad(loss, argnums=(0, 3), has_aux=True)
  return jax.jit(grad)


def floor_step(f, k):
  def run(params, x, z0):
    z = jax.lax.fori_loop(0, k, lambda _, z: f(params, z, x), z0)
    _, vjp = jax.vjp(lambda zz: f(params, zz, x), z)
    c = jnp.cos(z)
    w = jax.lax.fori_loop(0, k, lambda _, w: vjp(w)[0] + c, c)
    return z, w

  return jax.jit(run)


def median_times(runs: dict, repeats: int, block: int = 1, settle: float = 0.0) -> dict:
  """Median seconds of each zero-argument callable, warmed up, timed in alternation.

  Alternating the runs spreads slow drifts of a shared machine over all of
  them, so their ratios are measured side by side. With `block` > 1 each
  callable runs `block + 1` times per turn and the first (which pays for the
  previous callable's leftovers, e.g. another framework's spinning threads)
  is not counted, and `settle` seconds of sleep precede each turn (an OpenMP
  pool keeps its threads spinning for a while after its last call).
  """
  for run in runs.values():
    jax.block_until_ready(run())  # compile and warm up
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      time.sleep(settle)
      for i in range(block + (block > 1)):
        start = time.perf_counter()
        jax.block_until_ready(run())
        if block == 1 or i > 0:
          times[name].append(time.perf_counter() - start)
  return {name: sorted(t)[len(t) // 2] for name, t in times.items()}

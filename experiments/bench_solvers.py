r"""Solver overhead: forward + implicit backward Broyden against the evaluation floor.

    python -m experiments.bench_solvers [--cases=a,b,c] [--repeats=5] [--batch_axis=0]

For each case it times, in one run and side by side,
  * deqjax: `jax.grad` of a loss through `fixed_point` (Broyden, exactly K
    forward and K backward steps: tol = rtol = 0, full history), and
  * the floor: K plain evaluations of f followed by K vector-Jacobian
    products w <- w^T J + c, each in a `fori_loop`,
and prints their ratio (the solver algebra's overhead) and the compiled
temporary memory of the deqjax step next to (2 * history + 8) * n * 4 bytes.

Cases:
  a  tanh layer z = tanh(z W + x U + b), batch 64, width 512, float32;
  b  transformer-like cell (post-LayerNorm self-attention + FFN), batch 4,
     length 150, d_model 256, 8 heads, d_inner 1024;
  c  a state of ~1e6 unknowns (batch 4 x 256 x 1024) with a cheap f;
     compiled memory only unless --run_c.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

import deqjax

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["a", "b", "c"], "Which cases to run.")
flags.DEFINE_integer("steps", 30, "Forward and backward Broyden steps K.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (the median is reported).")
flags.DEFINE_integer("batch_axis", 0, "Per-sample axis (-1 for one system over the whole batch).")
flags.DEFINE_bool("run_c", False, "Also time case c (slow on a small CPU).")


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


def _time(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def _temp_bytes(fn, args):
  analysis = fn.lower(*args).compile().memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes


def main(argv):
  del argv
  k = FLAGS.steps
  batch_axis = None if FLAGS.batch_axis < 0 else FLAGS.batch_axis
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; K = {k}, history = K, batch_axis = {batch_axis}")
  for name in FLAGS.cases:
    title, make = CASES[name]
    f, params, x, z0 = make(jax.random.key(0))
    n = z0.size
    probe = deqjax.backward_probe(None if batch_axis is None else z0.shape[batch_axis])
    deq = deq_step(f, k, batch_axis)
    deq_args = (params, x, z0, probe)
    temp = _temp_bytes(deq, deq_args)
    bound = (2 * k + 8) * n * 4
    print(f"({name}) {title}: n = {n:,}")
    print(
      f"    compiled temp memory {temp / 2**20:9.1f} MiB   bound (2*{k}+8)*n*4 = {bound / 2**20:.1f} MiB"
      f"   ratio {temp / bound:.2f}"
    )
    if name == "c" and not FLAGS.run_c:
      continue
    (_, stats), info = deq(*deq_args)
    fwd_steps = int(jnp.max(info.nstep))
    bwd_steps = int(jnp.max(stats.nstep))
    t_deq = _time(deq, deq_args, FLAGS.repeats)
    t_floor = _time(floor_step(f, k), (params, x, z0), FLAGS.repeats)
    print(
      f"    deqjax fwd+bwd {t_deq * 1e3:8.1f} ms  ({fwd_steps} + {bwd_steps} steps)   floor {t_floor * 1e3:8.1f} ms"
      f"   ratio {t_deq / t_floor:.2f}"
    )


if __name__ == "__main__":
  app.run(main)

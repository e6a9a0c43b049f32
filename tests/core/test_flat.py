"""deqjax._flat: pytree states and their dtypes (16-bit, float32 under x64, float64, mixed)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import unrolled

import deqjax


def cell(w, z, x):
  return jnp.tanh(z @ w + x)


def _setup(dtype, batch=4, width=16):
  w = (0.5 * jax.random.normal(jax.random.key(0), (width, width)) / width**0.5).astype(dtype)
  x = jax.random.normal(jax.random.key(1), (batch, width)).astype(dtype)
  return w, x


@functools.cache
def _float64_reference(dtype_name: str):
  """z* and d sum(z*) / dw of `_setup(dtype)`'s rounded w and x, solved in float64 (once per dtype)."""
  w, x = (a.astype(jnp.float64) for a in _setup(jnp.dtype(dtype_name)))
  solve = lambda w: deqjax.fixed_point(
    cell, w, x, tol=1e-13, rtol=0.0, max_iter=80, backward_tol=1e-13, backward_rtol=0.0
  )
  return solve(w)[0], jax.grad(lambda w: jnp.sum(solve(w)[0]))(w)


def test_pytree_state_params_and_input():
  k = jax.random.split(jax.random.key(8), 4)
  params = {"mix": (0.3 * jax.random.normal(k[0], (4, 4)), [0.5 * jax.random.normal(k[1], (3, 3))])}
  x = {"a": jax.random.normal(k[2], (4,)), "b": jax.random.normal(k[3], (2, 3))}

  def f(p, z, x):
    m1, (m2,) = p["mix"]
    return {"a": jnp.tanh(m1 @ z["a"] + x["a"] + jnp.sum(z["b"])), "b": jnp.tanh(z["b"] @ m2 + x["b"] * 0.5)}

  z, info = deqjax.fixed_point(f, params, x, max_iter=60, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  assert bool(info.converged)
  ref = unrolled(f, params, x, jax.tree.map(jnp.zeros_like, x), 300)
  for got, want in zip(jax.tree.leaves(z), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-11)

  loss = lambda p, x: sum(
    jnp.sum(jnp.sin(leaf))
    for leaf in jax.tree.leaves(
      deqjax.fixed_point(
        f, p, x, max_iter=60, tol=1e-12, rtol=0.0, backward_max_iter=60, backward_tol=1e-12, backward_rtol=0.0
      )[0]
    )
  )
  loss_ref = lambda p, x: sum(
    jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(unrolled(f, p, x, jax.tree.map(jnp.zeros_like, x), 300))
  )
  got = jax.grad(loss, argnums=(0, 1))(params, x)
  want = jax.grad(loss_ref, argnums=(0, 1))(params, x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------
# (dtype, stopping tol, value tolerance, gradient tolerance relative to its largest entry). The
# 16-bit maps differ from the float64 map by their own rounding (eps 8e-3 and 1e-3), amplified
# by 1 / (1 - contraction); the tolerances are a few times that.
@pytest.mark.parametrize(
  "dtype, tol, atol, grad_rtol",
  [
    (jnp.bfloat16, 0.1, 0.08, 0.15),
    (jnp.float16, 1e-2, 1e-2, 2e-2),
    (jnp.float32, 1e-5, 1e-5, 1e-4),
    (jnp.float64, 1e-12, 1e-11, 1e-9),
  ],
)
@pytest.mark.parametrize("solver", ["broyden", "anderson", "iteration"])
def test_states_keep_their_dtype_and_solve_to_its_precision(dtype, tol, atol, grad_rtol, solver):
  w, x = _setup(dtype)
  z, info = jax.jit(
    lambda w, x: deqjax.fixed_point(cell, w, x, solver=solver, batch_axis=0, max_iter=60, tol=tol, rtol=0.0)
  )(w, x)
  assert z.dtype == dtype
  # Residuals are computed in float32 for 16-bit states, in the state's precision otherwise.
  assert info.residual.dtype == (jnp.float64 if dtype == jnp.float64 else jnp.float32)
  assert bool(jnp.all(info.converged)), info
  reference, ref_grad = _float64_reference(jnp.dtype(dtype).name)
  np.testing.assert_allclose(np.asarray(z, np.float64), reference, rtol=0, atol=atol)

  kw = dict(
    solver=solver,
    batch_axis=0,
    max_iter=60,
    tol=tol,
    rtol=0.0,
    backward_max_iter=60,
    backward_tol=tol,
    backward_rtol=0.0,
  )
  grad = jax.grad(lambda w: jnp.sum(deqjax.fixed_point(cell, w, x, **kw)[0].astype(jnp.float32)))(w)
  assert grad.dtype == dtype and bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))
  scale = float(jnp.max(jnp.abs(ref_grad)))
  np.testing.assert_allclose(np.asarray(grad, np.float64), ref_grad, atol=grad_rtol * scale, rtol=0)


@pytest.mark.parametrize("solver", ["broyden", "anderson", "iteration"])
def test_float32_stays_float32_with_x64_enabled(solver):
  assert jax.config.jax_enable_x64  # conftest turns it on
  w, x = _setup(jnp.float32)
  step = lambda w, x: jax.grad(lambda w: jnp.sum(deqjax.fixed_point(cell, w, x, solver=solver, batch_axis=0)[0]))(w)
  text = str(jax.make_jaxpr(step)(w, x))  # includes the while-loop bodies and the custom VJP
  # Only weakly typed Python scalars (f64[]) may appear; no float64 array is ever made.
  assert "f32[4,16]" in text and re.search(r"f64\[\d", text) is None


def test_mixed_precision_pytree_state():
  x = {"low": jnp.ones((3,), jnp.bfloat16), "high": jnp.ones((2,), jnp.float32)}
  f = lambda _, z, x: {
    "low": (0.5 * jnp.tanh(z["low"]) + x["low"]).astype(jnp.bfloat16),
    "high": 0.5 * jnp.sin(z["high"]) + x["high"],
  }
  z, info = deqjax.fixed_point(f, None, x, tol=1e-2, rtol=0.0)
  assert z["low"].dtype == jnp.bfloat16 and z["high"].dtype == jnp.float32
  assert bool(info.converged)

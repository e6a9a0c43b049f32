"""Weight-normalised dense layer: W = g * v / ||v|| (one gain per output unit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class WeightNormDense(nnx.Module):
  """Dense layer with weight normalisation (Salimans & Kingma, 2016).

  The effective kernel `g * v / ||v||` (norm over the input axis) is formed by
  `weights()`, once per forward pass: a DEQ cell passes the result to the
  solver, so the normalisation is not recomputed at every solver step.
  At initialisation g = ||v||, so the effective kernel equals v.

  Attributes:
    v: `[d_in, d_out]` direction.
    g: `[d_out]` gain.
    bias: `[d_out]` or None.
  """

  def __init__(self, d_in: int, d_out: int, *, use_bias: bool = True, init_scale: float = 1.0, rngs: nnx.Rngs):
    bound = init_scale / d_in**0.5
    v = jax.random.uniform(rngs.params(), (d_in, d_out), jnp.float32, -bound, bound)
    self.v = nnx.Param(v)
    self.g = nnx.Param(jnp.linalg.norm(v, axis=0))
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if use_bias else None

  def weights(self) -> dict:
    """`{"kernel": [d_in, d_out], "bias": [d_out] (if any)}` with the normalisation applied."""
    v = self.v[...]
    kernel = v * (self.g[...] / jnp.linalg.norm(v, axis=0))[None, :]
    return {"kernel": kernel} if self.bias is None else {"kernel": kernel, "bias": self.bias[...]}

  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(self.weights(), x)


def dense(weights: dict, x: jax.Array) -> jax.Array:
  """x `[..., d_in]` @ kernel (+ bias) -> `[..., d_out]`, in x's dtype."""
  y = x @ weights["kernel"].astype(x.dtype)
  if "bias" in weights:
    y = y + weights["bias"].astype(x.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
  return y


class WeightNormConv1D(nnx.Module):
  """Causal 1-D convolution with weight normalisation (one gain per output channel).

  Attributes:
    v: `[kernel, d_in, d_out]` direction (tap 0 is the oldest position).
    g: `[d_out]` gain (norm over taps and inputs).
    bias: `[d_out]`.
  """

  def __init__(self, d_in: int, d_out: int, kernel: int = 2, *, init_scale: float = 1.0, rngs: nnx.Rngs):
    bound = init_scale / (d_in * kernel) ** 0.5
    v = jax.random.uniform(rngs.params(), (kernel, d_in, d_out), jnp.float32, -bound, bound)
    self.v = nnx.Param(v)
    self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1))))
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

  def weights(self) -> dict:
    """`{"kernel": [kernel, d_in, d_out], "bias": [d_out]}` with the normalisation applied."""
    v = self.v[...]
    scale = self.g[...] / jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)))
    return {"kernel": v * scale[None, None, :], "bias": self.bias[...]}


def causal_conv(weights: dict, x: jax.Array, history: jax.Array, dilation: int = 1) -> jax.Array:
  """y_t = sum_j W_j x_{t - (K-1-j) dilation} + b over x `[b, q, d_in]`.

  `history` `[b, (K-1) dilation, d_in]` holds the positions before x (the previous
  segment's inputs, or zeros).
  """
  kernel = weights["kernel"].astype(x.dtype)
  taps, q = kernel.shape[0], x.shape[1]
  if history.shape[1] != (taps - 1) * dilation:
    raise ValueError(
      f"history has {history.shape[1]} positions; a {taps}-tap convolution with dilation {dilation}"
      f" needs {(taps - 1) * dilation}."
    )
  padded = jnp.concatenate([history.astype(x.dtype), x], axis=1)
  y = sum(padded[:, j * dilation : j * dilation + q] @ kernel[j] for j in range(taps))
  return y + weights["bias"].astype(x.dtype)[None, None, :]

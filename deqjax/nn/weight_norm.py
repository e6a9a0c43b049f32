"""Normalised linear maps: weight norm W = g * v / ||v|| (one gain per output unit), or spectral norm
W = v / sigma(v) (sigma: the largest singular value, by power iteration)."""

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

  def __init__(
    self, d_in: int, d_out: int, *, use_bias: bool = True, init_scale: float = 1.0, norm: str = "weight",
    rngs: nnx.Rngs,
  ):  # fmt: skip
    """norm: "weight" (the gains g, as above) or "spectral" (W = v / sigma(v), no gains: spectral norm 1)."""
    check_norm(norm)
    bound = init_scale / d_in**0.5
    v = jax.random.uniform(rngs.params(), (d_in, d_out), jnp.float32, -bound, bound)
    self.v = nnx.Param(v)
    self.g = nnx.Param(jnp.linalg.norm(v, axis=0)) if norm == "weight" else None
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if use_bias else None

  def weights(self) -> dict:
    """`{"kernel": [d_in, d_out], "bias": [d_out] (if any)}` with the normalisation applied."""
    v = self.v[...]
    if self.g is None:
      kernel = v / spectral_norm(v)
    else:
      kernel = v * (self.g[...] / jnp.linalg.norm(v, axis=0))[None, :]
    return {"kernel": kernel} if self.bias is None else {"kernel": kernel, "bias": self.bias[...]}

  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(self.weights(), x)


NORMS = ("weight", "spectral")
SPECTRAL_ITERATIONS = 30


def check_norm(norm: str, name: str = "norm") -> None:
  """Raises ValueError unless `norm` (the field `name`) is one of NORMS."""
  if norm not in NORMS:
    raise ValueError(f"Unknown {name}={norm!r}; expected one of {list(NORMS)}.")


def spectral_norm(matrix: jax.Array, iterations: int = SPECTRAL_ITERATIONS) -> jax.Array:
  """The largest singular value of `matrix` `[..., d_out]` (leading axes flattened into rows), differentiable.

  Power iteration on M^T M from a fixed start (the same every call: the layer stays a pure function
  of its parameters) for `iterations` steps, then sigma = u^T M v with u, v held constant, whose
  gradient is u v^T, that of the top singular value when it is simple. The estimate never exceeds
  sigma and approaches it at the rate (sigma_2 / sigma_1)^(2 iterations).
  """
  m = matrix.reshape(-1, matrix.shape[-1])
  v = jax.random.normal(jax.random.key(0), (m.shape[1],), m.dtype)

  def step(_, v):
    w = m.T @ (m @ v)
    return w / jnp.linalg.norm(w)

  v = jax.lax.stop_gradient(jax.lax.fori_loop(0, iterations, step, v / jnp.linalg.norm(v)))
  u = jax.lax.stop_gradient(m @ v)
  u = u / jnp.linalg.norm(u)
  return u @ m @ v


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

  def __init__(
    self, d_in: int, d_out: int, kernel: int = 2, *, init_scale: float = 1.0, norm: str = "weight",
    rngs: nnx.Rngs,
  ):  # fmt: skip
    """norm: "weight" or "spectral" (the kernel as a `[kernel * d_in, d_out]` matrix divided by its sigma)."""
    check_norm(norm)
    bound = init_scale / (d_in * kernel) ** 0.5
    v = jax.random.uniform(rngs.params(), (kernel, d_in, d_out), jnp.float32, -bound, bound)
    self.v = nnx.Param(v)
    self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)))) if norm == "weight" else None
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

  def weights(self) -> dict:
    """`{"kernel": [kernel, d_in, d_out], "bias": [d_out]}` with the normalisation applied."""
    v = self.v[...]
    if self.g is None:
      return {"kernel": v / spectral_norm(v), "bias": self.bias[...]}
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

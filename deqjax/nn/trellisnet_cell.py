"""The DEQ-TrellisNet cell: a weight-tied TrellisNet layer with LSTM gates and input injection.

State z = {"h": [b, q, H], "c": [b, q, H]}, H = nhid + nout. Per segment the
injection inj = CausalConv_k(x) (weight normalised, d_embed -> 4H, its left
padding zeros, as the reference's `inject_conv(F.pad(X, (k-1, 0)))`) is formed
once; then

    out        = inj + CausalConv_k,dil(drop(h))      (weight normalised, H -> 4H)
    i, o, g, f = sigma, sigma, tanh, sigma of the four quarters of out
    c_t        = f_t * c_{t-1} + i_t * g_t           (c_{t-1}: the iterate shifted right by one step)
    h_t        = o_t * tanh(c_t)

The recurrent convolution's (k - 1) * dil positions of left padding are all the
previous segment's last h, and c_{-1} its last c, as in the reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax.nn.dropout import apply_mask
from deqjax.nn.weight_norm import WeightNormConv1D, causal_conv


class DEQTrellisNetCell(nnx.Module):
  def __init__(
    self, d_embed: int, d_state: int, *, kernel_size: int = 2, dilation: int = 1, norm: str = "weight",
    injection_norm: str | None = None, rngs: nnx.Rngs,
  ):  # fmt: skip
    """norm: both convolutions' normalisation ("weight" or "spectral"); injection_norm: the injection's, if other."""
    injection_norm = norm if injection_norm is None else injection_norm
    self.inject = WeightNormConv1D(d_embed, 4 * d_state, kernel_size, norm=injection_norm, rngs=rngs)
    self.recur = WeightNormConv1D(d_state, 4 * d_state, kernel_size, norm=norm, rngs=rngs)
    self.kernel_size, self.dilation = kernel_size, dilation

  @property
  def f(self):
    """The pure f(weights, z, inputs) of this cell (`step` with its dilation bound)."""
    return functools.partial(DEQTrellisNetCell.step, dilation=self.dilation)

  def injection(self, x: jax.Array) -> jax.Array:
    """The injection `[b, q, 4H]` of a segment's embeddings x `[b, q, d_embed]` (left padding zeros)."""
    b, _, d_embed = x.shape
    return causal_conv(self.inject.weights(), x, jnp.zeros((b, self.kernel_size - 1, d_embed), x.dtype))

  def prepare(self, injection: jax.Array, h_hist: jax.Array, c_hist: jax.Array, h_mask):
    """Per-(sub-)sequence constants.

    Args:
      injection: `[b, q, 4H]`, from `injection` (or a slice of it for a sub-sequence).
      h_hist, c_hist: `[b, 1, H]` last h and c before these positions.
      h_mask: variational dropout mask `[b, 1, H]` on h, or None.

    Returns:
      (weights, inputs) for `step`.
    """
    inputs = {
      "injection": injection,
      "h_hist": jnp.repeat(h_hist, (self.kernel_size - 1) * self.dilation, axis=1),
      "c_hist": c_hist,
      "h_mask": h_mask,
    }
    return self.recur.weights(), inputs

  @staticmethod
  def step(weights: dict, z: dict, inputs: dict, *, dilation: int = 1) -> dict:
    """f(z): {"h", "c"} `[b, q, H]` each -> the same."""
    h, c = z["h"], z["c"]
    out = inputs["injection"].astype(h.dtype) + causal_conv(
      weights,
      apply_mask(h, inputs["h_mask"]),
      apply_mask(inputs["h_hist"].astype(h.dtype), inputs["h_mask"]),
      dilation,
    )
    i, o, g, f = jnp.split(out, 4, axis=-1)
    c_prev = jnp.concatenate([inputs["c_hist"].astype(c.dtype), c[:, :-1]], axis=1)
    c_new = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c_new), "c": c_new}

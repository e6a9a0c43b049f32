"""The DEQ-TrellisNet cell: a weight-tied TrellisNet layer with LSTM gates and input injection.

State z = {"h": [b, q, H], "c": [b, q, H]}, H = nhid + nout. Per segment the
injection inj = CausalConv_2(x) (weight normalised, d_embed -> 4H) is formed
once; then

    out        = inj + CausalConv_2(drop(h))          (weight normalised, H -> 4H)
    i, o, g, f = sigma, sigma, tanh, sigma of the four quarters of out
    c_t        = f_t * c_{t-1} + i_t * g_t           (c_{t-1}: the iterate shifted right by one step)
    h_t        = o_t * tanh(c_t)

The left padding of both convolutions and c_{-1} come from the previous
segment (its last input embedding and last h, c), as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax.nn.dropout import apply_mask
from deqjax.nn.weight_norm import WeightNormConv1D, causal_conv


class DEQTrellisNetCell(nnx.Module):
  def __init__(self, d_embed: int, d_state: int, *, rngs: nnx.Rngs):
    self.inject = WeightNormConv1D(d_embed, 4 * d_state, 2, rngs=rngs)
    self.recur = WeightNormConv1D(d_state, 4 * d_state, 2, rngs=rngs)

  def prepare(self, x: jax.Array, x_hist: jax.Array, h_hist: jax.Array, c_hist: jax.Array, h_mask):
    """Per-segment constants.

    Args:
      x: `[b, q, d_embed]` (dropped-out) input embeddings.
      x_hist, h_hist, c_hist: `[b, 1, .]` last input, h and c of the previous segment.
      h_mask: variational dropout mask `[b, 1, H]` on h, or None.

    Returns:
      (weights, inputs) for `step`.
    """
    weights = self.recur.weights()
    inputs = {
      "injection": causal_conv(self.inject.weights(), x, x_hist),
      "h_hist": h_hist,
      "c_hist": c_hist,
      "h_mask": h_mask,
    }
    return weights, inputs

  @staticmethod
  def step(weights: dict, z: dict, inputs: dict) -> dict:
    h, c = z["h"], z["c"]
    out = inputs["injection"].astype(h.dtype) + causal_conv(
      weights, apply_mask(h, inputs["h_mask"]), apply_mask(inputs["h_hist"].astype(h.dtype), inputs["h_mask"])
    )
    i, o, g, f = jnp.split(out, 4, axis=-1)
    c_prev = jnp.concatenate([inputs["c_hist"].astype(c.dtype), c[:, :-1]], axis=1)
    c_new = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c_new), "c": c_new}

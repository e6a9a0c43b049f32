"""The DEQ-Transformer cell f(z; u): a weight-tied Transformer-XL layer with input injection.

post-LayerNorm (the reference's default):

    qkv = W_qkv [z_mem; z] + u                      (u injected into Q, K and V, memory included)
    a   = drop(W_o RelAttn(q, k, v; r = W_r drop(pos)) + b_o)
    z'  = LN(z + a)
    f   = LN(z' + drop(W_2 drop(ReLU(W_1 z' + b_1)) + b_2))

pre-LayerNorm (the reference's `pre_lnorm=True`):

    qkv = W_qkv LN([z_mem; z]) + u
    z'  = LN(z + a)                                 (a as above; the residual adds the normalised z')
    f   = z' + drop(W_2 drop(ReLU(W_1 z' + b_1)) + b_2)

LayerNorm has no learnable scale or bias; qkv, r, o, ff1 and ff2 are weight
normalised. The dropouts are the reference's, variational (`cell_masks`): one mask per
sequence and channel, shared by every position and solver step; the position embedding's
one mask is shared by the batch too. Attention is causal over [memory; segment] and, as the reference's
`local_size`, limited to keys at distance below `window` (None: unlimited).
Shapes: z `[batch, q, d_model]`, memory `[batch, m, d_model]`,
u `[batch, q, 3 * n_head * d_head]` (and `[batch, m, ...]` for the memory).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax.nn.attention import layer_norm, relative_attention
from deqjax.nn.dropout import apply_mask, variational_mask
from deqjax.nn.weight_norm import WeightNormDense, dense


class DEQTransformerCell(nnx.Module):
  """Parameters of the cell; `prepare` + `step` make the solver's f.

  `prepare` does, once per segment, everything that does not depend on z:
  weight normalisation, the memory's keys and values, the projected position
  embeddings. `step(weights, z, inputs)` is then the pure f handed to
  `deqjax.fixed_point`.
  """

  def __init__(
    self,
    d_model: int,
    n_head: int,
    d_head: int,
    d_inner: int,
    *,
    pre_lnorm: bool = False,
    window: int | None = None,
    norm: str = "weight",
    remat_attention: bool = True,
    attention_chunks: int = 1,
    rngs: nnx.Rngs,
  ):
    width = n_head * d_head
    self.qkv = WeightNormDense(d_model, 3 * width, use_bias=False, norm=norm, rngs=rngs)
    self.r_net = WeightNormDense(d_model, width, use_bias=False, norm=norm, rngs=rngs)
    self.r_w_bias = nnx.Param(jax.random.uniform(rngs.params(), (n_head, d_head), jnp.float32, -0.05, 0.05))
    self.r_r_bias = nnx.Param(jax.random.uniform(rngs.params(), (n_head, d_head), jnp.float32, -0.05, 0.05))
    self.o_net = WeightNormDense(width, d_model, use_bias=True, norm=norm, rngs=rngs)
    self.ff1 = WeightNormDense(d_model, d_inner, use_bias=True, norm=norm, rngs=rngs)
    self.ff2 = WeightNormDense(d_inner, d_model, use_bias=True, norm=norm, rngs=rngs)
    self.n_head, self.d_head = n_head, d_head
    self.pre_lnorm, self.window, self.remat_attention = pre_lnorm, window, remat_attention
    self.attention_chunks = attention_chunks

  @property
  def f(self):
    """The pure f(weights, z, inputs) of this cell's variant (`step` with its static options bound)."""
    return functools.partial(
      DEQTransformerCell.step, pre_lnorm=self.pre_lnorm, window=self.window, remat_attention=self.remat_attention,
      attention_chunks=self.attention_chunks,
    )  # fmt: skip

  def prepare(
    self,
    u_mem: jax.Array | None,
    u: jax.Array | None,
    z_mem: jax.Array,
    pos_emb: jax.Array,
    masks: dict | None = None,
  ):
    """Per-segment constants.

    Args:
      u_mem, u: `[b, m, 3 * h * d]` and `[b, q, 3 * h * d]` injections of the memory
        and of the segment, or both None (no injection).
      z_mem: `[b, m, d_model]` memory (previous equilibria, no gradient).
      pos_emb: `[m + q, d_model]` sinusoidal embeddings for distances m+q-1..0.
      masks: `cell_masks`' variational dropout masks, or None (no dropout).

    Returns:
      (weights, inputs) for `step`.
    """
    b, m = z_mem.shape[:2]
    h, d = self.n_head, self.d_head
    masks = dict.fromkeys(("pos", "attn", "ff_hidden", "ff_out")) if masks is None else masks
    qkv = self.qkv.weights()
    mem_qkv = dense(qkv, layer_norm(z_mem) if self.pre_lnorm else z_mem)
    mem_qkv = mem_qkv if u_mem is None else mem_qkv + u_mem
    k_mem, v_mem = mem_qkv[..., h * d : 2 * h * d], mem_qkv[..., 2 * h * d :]
    weights = {
      "qkv": qkv,
      "o": self.o_net.weights(),
      "ff1": self.ff1.weights(),
      "ff2": self.ff2.weights(),
      "r_w_bias": self.r_w_bias[...],
      "r_r_bias": self.r_r_bias[...],
    }
    inputs = {
      "u": u,
      "k_mem": k_mem.reshape(b, m, h, d),
      "v_mem": v_mem.reshape(b, m, h, d),
      "r_k": dense(self.r_net.weights(), apply_mask(pos_emb[None], masks["pos"])[0]).reshape(-1, h, d),
      "attn_mask": masks["attn"],
      "ff_mask": masks["ff_hidden"],
      "ff_out_mask": masks["ff_out"],
    }
    return weights, inputs

  @staticmethod
  def step(
    weights: dict,
    z: jax.Array,
    inputs: dict,
    *,
    pre_lnorm: bool = False,
    window: int | None = None,
    remat_attention: bool = True,
    attention_chunks: int = 1,
  ):
    """f(z): `[b, q, d_model]` -> `[b, q, d_model]` (the static options as the cell's)."""
    b, q, _ = z.shape
    h, d = weights["r_w_bias"].shape
    qkv = dense(weights["qkv"], layer_norm(z) if pre_lnorm else z)
    if inputs["u"] is not None:  # None: an ordinary (uninjected) Transformer-XL layer
      qkv = qkv + inputs["u"].astype(z.dtype)
    query = qkv[..., : h * d].reshape(b, q, h, d)
    key = jnp.concatenate([inputs["k_mem"].astype(z.dtype), qkv[..., h * d : 2 * h * d].reshape(b, q, h, d)], axis=1)
    value = jnp.concatenate([inputs["v_mem"].astype(z.dtype), qkv[..., 2 * h * d :].reshape(b, q, h, d)], axis=1)
    mlen = inputs["k_mem"].shape[1]
    attn = relative_attention(
      query, key, value, inputs["r_k"].astype(z.dtype), weights["r_w_bias"], weights["r_r_bias"], mlen, window,
      remat=remat_attention, query_chunks=attention_chunks,
    )  # fmt: skip
    z1 = layer_norm(z + apply_mask(dense(weights["o"], attn.reshape(b, q, h * d)), inputs["attn_mask"]))
    hidden = apply_mask(jax.nn.relu(dense(weights["ff1"], z1)), inputs["ff_mask"])
    out = z1 + apply_mask(dense(weights["ff2"], hidden), inputs["ff_out_mask"])
    return out if pre_lnorm else layer_norm(out)


def cell_masks(key: jax.Array | None, batch: int, d_model: int, d_inner: int, rate: float, dtype=jnp.float32):
  """The cell's variational dropout masks for one segment, as the reference draws them; None without a key.

  Returns:
    {"pos": `[1, 1, d_model]` (the position embedding's, shared by the batch), "attn": `[b, 1, d_model]`
    (attention output), "ff_hidden": `[b, 1, d_inner]` (after the ReLU), "ff_out": `[b, 1, d_model]`}.
  """
  if key is None or rate == 0:
    return None
  pos, attn, ff_hidden, ff_out = jax.random.split(key, 4)
  return {
    "pos": variational_mask(pos, 1, d_model, rate, dtype),
    "attn": variational_mask(attn, batch, d_model, rate, dtype),
    "ff_hidden": variational_mask(ff_hidden, batch, d_inner, rate, dtype),
    "ff_out": variational_mask(ff_out, batch, d_model, rate, dtype),
  }


def slide_memory(old: jax.Array, new: jax.Array, keep: int) -> jax.Array:
  """The last `keep` positions of [old; new] along axis 1 (all of them when there are fewer)."""
  if keep <= new.shape[1]:
    return new[:, new.shape[1] - keep :]
  both = jnp.concatenate([old.astype(new.dtype), new], axis=1)
  return both[:, max(both.shape[1] - keep, 0) :]

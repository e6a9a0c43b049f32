"""Transformer-XL-style baseline: L untied layers with per-layer memory, built from the DEQ cell's code.

Each layer is a `DEQTransformerCell` without input injection (the embedding
enters the first layer only), so the baseline and the DEQ share attention,
FFN, normalisation and softmax code. Layer l caches the hidden states that
entered it (the last `mem_len` of them) as its memory, as in Transformer-XL.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax.models.deq_transformer import DEQTransformerConfig, cell_of
from deqjax.models.output import ModelOutput, refuse_deq_options
from deqjax.nn.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from deqjax.nn.attention import sinusoid_positions
from deqjax.nn.dropout import apply_mask, position_mask, variational_mask
from deqjax.nn.transformer_cell import cell_masks, slide_memory


@dataclasses.dataclass(frozen=True)
class TransformerXLConfig(DEQTransformerConfig):
  """`DEQTransformerConfig` plus the number of untied layers (solver fields are unused)."""

  n_layer: int = 16

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.n_layer, bool) or not isinstance(self.n_layer, int) or self.n_layer < 1:
      raise ValueError(f"n_layer must be an int >= 1; got {self.n_layer!r}.")


class TransformerXLLM(nnx.Module):
  def __init__(self, config: TransformerXLConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embedding = AdaptiveEmbedding(c.n_token, c.d_embed, c.d_model, c.cutoffs, c.div_val, rngs=rngs)
    self.layers = nnx.List(cell_of(c, rngs) for _ in range(c.n_layer))
    self.softmax = ProjectedAdaptiveLogSoftmax(
      c.n_token, c.d_embed, c.d_model, c.cutoffs, c.div_val, tie_weights=c.tie_weights, tie_projs=c.tie_projs,
      rngs=rngs,
    )  # fmt: skip

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> tuple[jax.Array, ...]:
    """Per layer, zeros of `length` positions (0, the default: empty)."""
    return tuple(jnp.zeros((batch, length, self.config.d_model), dtype) for _ in range(self.config.n_layer))

  def body(self, h: jax.Array, memory, *, dropout_key=None, unrolled=False, jac_key=None, **solver_overrides):
    """The untied layers: `[b, q, d_model]` embeddings -> (output, per-layer memory, None, None).

    `dropout_key` is split into one key per layer (None: no dropout); the DEQ-only options are refused.
    """
    refuse_deq_options("TransformerXLLM", unrolled, jac_key, solver_overrides)
    c = self.config
    b = h.shape[0]
    dtype = h.dtype
    memory = self.init_memory(b, dtype) if memory is None else memory
    keys = [None] * c.n_layer if dropout_key is None else list(jax.random.split(dropout_key, c.n_layer))
    new_memory = []
    for layer, mem, key in zip(self.layers, memory, keys, strict=True):
      new_memory.append(jax.lax.stop_gradient(slide_memory(mem, h, c.mem_len)))
      pos_emb = sinusoid_positions(mem.shape[1] + h.shape[1], c.d_model, dtype)
      masks = cell_masks(key, b, c.d_model, c.d_inner, c.dropout, dtype)
      weights, inputs = layer.prepare(None, None, mem.astype(dtype), pos_emb, masks)
      h = layer.f(jax.tree.map(lambda w: w.astype(dtype), weights), h, inputs)
    return h, tuple(new_memory), None, None

  def __call__(
    self, tokens, targets, memory=None, *, dropout_key=None, dtype=jnp.float32, unrolled=False, jac_key=None, **solver
  ) -> ModelOutput:
    """Per-token NLL of `targets` given `tokens` (both `[b, q]`) and the per-layer memory."""
    c = self.config
    b, q = tokens.shape
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    h = apply_mask(self.embedding(tokens).astype(dtype), variational_mask(keys[0], b, c.d_model, c.dropout, dtype))
    h, new_memory, _, _ = self.body(h, memory, dropout_key=keys[1], unrolled=unrolled, jac_key=jac_key, **solver)
    h = apply_mask(h, position_mask(keys[2], b, q, c.dropout, dtype))
    acc = jnp.promote_types(dtype, jnp.float32)
    nll = self.softmax.nll(h.reshape(b * q, -1).astype(acc), targets.reshape(-1), self.embedding)
    return ModelOutput(nll.reshape(b, q), new_memory)

"""DEQ-Transformer language model (Bai et al., 2019), as the reference code ships it.

    tokens -> adaptive embedding x sqrt(d) -> variational dropout -> injection u = W_u e + b_u
    z* = f(z*; u, memory)  (DEQTransformerCell, per-sample Broyden, implicit backward)
    z* (f(z*) in training) -> dropout of whole positions -> projected adaptive log-softmax (tied) -> NLL

The memory carried between segments holds the last `mem_len` equilibrium
states and their injections, detached.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax.models.output import ModelOutput
from deqjax.models.sequence import classifier_output
from deqjax.nn.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax, check_cutoffs, check_tie_projs
from deqjax.nn.attention import sinusoid_positions
from deqjax.nn.deq_layer import DEQSettings, cell_output, check_bool, check_int, join_sub_sequences, sub_sequences
from deqjax.nn.dropout import apply_mask, position_mask, variational_mask
from deqjax.nn.transformer_cell import DEQTransformerCell, cell_masks, slide_memory
from deqjax.nn.weight_norm import check_norm


@dataclasses.dataclass(frozen=True)
class DEQTransformerConfig(DEQSettings):
  """Architecture; the solver settings (caps, tolerances, history, pretrain_depth, feed_fz) are `DEQSettings`.

  Attributes:
    n_token: vocabulary size.
    d_model: state width (= d_proj of the adaptive embedding).
    n_head, d_head: attention heads and their width (d_head None: d_model // n_head).
    d_inner: feed-forward width.
    d_embed: embedding width of the head cluster (None: d_model).
    cutoffs: adaptive softmax boundaries (empty: a plain tied softmax).
    div_val: width divisor between clusters.
    dropout: variational dropout on the embedding, the position embedding, the attention output,
      the FFN's hidden units and output (`cell_masks`), and the output positions, as the reference.
    mem_len: equilibrium states kept as memory for the next segment.
    pre_lnorm: the reference's pre-LayerNorm variant of the cell (default: post-LayerNorm).
    local_size: attention sees keys at distance < local_size; 0 is the reference's 1000.
    tie_weights: the softmax's output tables are the embedding's (False: its own).
    tie_projs: per cluster, whether the softmax reuses the embedding's projection (None: the
      reference training script's choice, the head's own and the tails' tied; missing trailing
      entries are untied, as in the reference). Resolved to one bool per cluster.
    norm: the cell's linear maps' normalisation: "weight" (the reference's weight norm) or
      "spectral" (each kernel divided by its largest singular value: a stability lever, not the
      reference).
    remat_attention: recompute each attention head's forward in every VJP (`relative_attention`'s
      `remat`): the linearisation at z* stores no `[b, q, k]` tensor. False stores each head's
      probabilities once per linearisation and makes every VJP of the backward solve cheaper
      (memory for time; the same numbers).
    attention_chunks: compute attention in this many blocks of queries, each scoring only the keys
      up to its last query (`relative_attention`'s `query_chunks`; 1: one block). Long causal
      segments then form ~(n + 1) / 2n of the score entries (the copy-memory task: 4 blocks, each
      DEQ step's attention ~0.75x the time); the same numbers up to the softmax's summation order.
  """

  n_token: int
  d_model: int
  n_head: int
  d_inner: int
  d_head: int | None = None
  d_embed: int | None = None
  cutoffs: tuple[int, ...] = ()
  div_val: int = 1
  dropout: float = 0.0
  mem_len: int = 0
  pre_lnorm: bool = False
  local_size: int = 0
  tie_weights: bool = True
  tie_projs: tuple[bool, ...] | None = None
  norm: str = "weight"
  remat_attention: bool = True
  attention_chunks: int = 1

  def __post_init__(self):
    super().__post_init__()
    check_norm(self.norm)
    check_bool("remat_attention", self.remat_attention)
    check_int("attention_chunks", self.attention_chunks, low=1)
    for name in ("d_model", "n_head", "d_inner", "div_val"):
      check_int(name, getattr(self, name), low=1)
    for name in ("n_token", "mem_len"):  # n_token 0: set from the data by the experiments
      check_int(name, getattr(self, name), low=0)
    for name in ("d_head", "d_embed"):
      if getattr(self, name) is not None:
        check_int(name, getattr(self, name), low=1)
    if self.d_head is None:
      if self.d_model % self.n_head:
        raise ValueError(
          f"d_model={self.d_model} is not divisible by n_head={self.n_head}; set d_head explicitly or change one."
        )
      object.__setattr__(self, "d_head", self.d_model // self.n_head)
    if self.d_embed is None:
      object.__setattr__(self, "d_embed", self.d_model)
    object.__setattr__(self, "cutoffs", tuple(self.cutoffs))
    if self.cutoffs:
      check_cutoffs(self.n_token, self.cutoffs, self.div_val)
    if not 0 <= self.dropout < 1:
      raise ValueError(f"dropout must be in [0, 1); got {self.dropout}.")
    if isinstance(self.local_size, bool) or not isinstance(self.local_size, int) or self.local_size < 0:
      raise ValueError(f"local_size must be an int >= 0 (0: the reference's 1000); got {self.local_size!r}.")
    object.__setattr__(self, "tie_projs", check_tie_projs(self.tie_projs, len(self.cutoffs) + 1))

  @property
  def attention_window(self) -> int:
    """Keys at this distance or more are masked (the reference maps local_size 0 to 1000)."""
    return self.local_size or 1000


class Memory(NamedTuple):
  """What one segment hands the next: `z` `[b, mem_len, d]`, `u` `[b, mem_len, 3 h d]` (detached)."""

  z: jax.Array
  u: jax.Array


def transformer_body(model, emb, memory: Memory, dropout_key, unrolled: bool, jac_key, **solver_overrides):
  """The DEQ-Transformer stage between the embedding and the output dropout (the LM's and the classifier's).

  `model` has `config` (a `DEQTransformerConfig`-like), `injection` and `cell`; `emb` is `[b, q, d_model]`
  in the compute dtype; `memory` the previous segment's. Returns (output `[b, q, d_model]`,
  the new `Memory` (detached), the forward `SolveInfo` or None, the per-sample Jacobian penalty or None).
  """
  c = model.config
  b, q, _ = emb.shape
  dtype = emb.dtype
  u = model.injection(emb)
  masks = cell_masks(dropout_key, b, c.d_model, c.d_inner, c.dropout, dtype)
  z_mem, u_mem = memory.z.astype(dtype), memory.u.astype(dtype)
  parts = []
  for start, stop in sub_sequences(q, 0 if unrolled else c.subseq_len):  # unrolled: whole, as the reference
    u_part = u[:, start:stop]
    pos_emb = sinusoid_positions(u_mem.shape[1] + stop - start, c.d_model, dtype)
    weights, inputs = model.cell.prepare(u_mem, u_part, z_mem, pos_emb, masks)
    weights = jax.tree.map(lambda w: w.astype(dtype), weights)
    z0 = jnp.zeros((b, stop - start, c.d_model), dtype)
    parts.append(
      cell_output(
        model.cell.f, weights, inputs, z0, c, unrolled=unrolled, training=dropout_key is not None, jac_key=jac_key,
        shared_inputs=("r_k",), **solver_overrides,
      )
    )  # fmt: skip
    # As the reference, a later sub-sequence attends to the previous one's equilibria only.
    z_mem, u_mem = parts[-1][0], u_part
  z_star, out, info, extras = join_sub_sequences(parts)
  new_memory = jax.lax.stop_gradient(
    Memory(slide_memory(memory.z, z_star, c.mem_len), slide_memory(memory.u, u, c.mem_len))
  )
  return out, new_memory, info, extras


def empty_memory(config, batch: int, dtype, length: int = 0) -> Memory:
  """Zeros of `length` positions (0: the reference's empty memory: the first segment sees no context)."""
  c = config
  return Memory(
    jnp.zeros((batch, length, c.d_model), dtype), jnp.zeros((batch, length, 3 * c.n_head * c.d_head), dtype)
  )


def cell_of(c: DEQTransformerConfig, rngs: nnx.Rngs) -> DEQTransformerCell:
  """The cell a `DEQTransformerConfig` (or a config extending it) describes."""
  return DEQTransformerCell(
    c.d_model, c.n_head, c.d_head, c.d_inner, pre_lnorm=c.pre_lnorm, window=c.attention_window, norm=c.norm,
    remat_attention=c.remat_attention, attention_chunks=c.attention_chunks, rngs=rngs,
  )  # fmt: skip


class DEQTransformerLM(nnx.Module):
  def __init__(self, config: DEQTransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embedding = AdaptiveEmbedding(c.n_token, c.d_embed, c.d_model, c.cutoffs, c.div_val, rngs=rngs)
    self.injection = nnx.Linear(c.d_model, 3 * c.n_head * c.d_head, rngs=rngs)
    self.cell = cell_of(c, rngs)
    self.softmax = ProjectedAdaptiveLogSoftmax(
      c.n_token, c.d_embed, c.d_model, c.cutoffs, c.div_val, tie_weights=c.tie_weights, tie_projs=c.tie_projs,
      rngs=rngs,
    )  # fmt: skip

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> Memory:
    """Zeros of `length` positions (0, the default: the reference's empty memory)."""
    return empty_memory(self.config, batch, dtype, length)

  def body(self, emb, memory: Memory | None, *, dropout_key=None, unrolled=False, jac_key=None, **solver_overrides):
    """Everything between the embedding and the output dropout.

    Args:
      emb: `[b, q, d_model]` (dropped-out) embeddings; their dtype is the compute dtype.
      memory: the previous segment's `Memory`, or None.
      dropout_key: PRNG key of the cell's variational masks (`cell_masks`; None: no dropout, and
        the softmax reads z*, not f(z*)).
      unrolled: apply the cell `pretrain_depth` times instead of solving.
      jac_key: PRNG key of the Jacobian penalty's probe (None: not computed).

    Returns:
      (output `[b, q, d_model]`, the new `Memory`, the forward `SolveInfo` or None, the
      `CellExtras`: the per-sample Jacobian penalty `[b]` or None, the fixed-point correction's
      outputs, each `[b, q, d_model]`).
    """
    memory = self.init_memory(emb.shape[0], emb.dtype) if memory is None else memory
    return transformer_body(self, emb, memory, dropout_key, unrolled, jac_key, **solver_overrides)

  def __call__(
    self,
    tokens: jax.Array,
    targets: jax.Array,
    memory: Memory | None = None,
    *,
    dropout_key: jax.Array | None = None,
    dtype=jnp.float32,
    unrolled: bool = False,
    jac_key: jax.Array | None = None,
    **solver_overrides,
  ) -> ModelOutput:
    """Per-token NLL of `targets` given `tokens` (both `[b, q]`) and the memory.

    Args:
      dropout_key: PRNG key for the variational masks: a training call. None evaluates (no
        dropout, the softmax reads z*).
      dtype: compute dtype of the cell (e.g. jnp.bfloat16); the softmax runs in at least float32.
      unrolled: apply the cell `pretrain_depth` times (the shallow pretraining) instead of solving.
      jac_key: PRNG key for the Jacobian penalty (`jac_loss`); None skips it.
      solver_overrides: `deqjax.fixed_point` options for this call (and `settle_iters` of
        `deqjax.nn.solve_cell` when unrolled).
    """
    b, q = tokens.shape
    out, new_memory, info, extras = transformer_features(
      self, tokens, memory, dropout_key, dtype, unrolled, jac_key, **solver_overrides
    )
    acc = jnp.promote_types(dtype, jnp.float32)
    nll = lambda o: self.softmax.nll(o.reshape(b * q, -1).astype(acc), targets.reshape(-1), self.embedding).reshape(
      b, q
    )
    correction_nll = jnp.stack([nll(o) for o in extras.corrections]) if extras.corrections else None
    radius = extras.spectral_radius
    return ModelOutput(
      nll(out), new_memory, info, extras.jac_loss, correction_nll=correction_nll, spectral_radius=radius
    )


def transformer_features(model, tokens, memory, dropout_key, dtype, unrolled, jac_key, **solver_overrides):
  """Embedding, its dropout, the body, dropout of whole positions (the LM's and the classifier's)."""
  c = model.config
  b = tokens.shape[0]
  keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
  emb = apply_mask(model.embedding(tokens).astype(dtype), variational_mask(keys[0], b, c.d_model, c.dropout, dtype))
  memory = empty_memory(c, b, dtype) if memory is None else memory
  out, new_memory, info, extras = transformer_body(model, emb, memory, keys[1], unrolled, jac_key, **solver_overrides)
  mask = position_mask(keys[2], b, tokens.shape[1], c.dropout, dtype)
  corrections = tuple(apply_mask(o, mask) for o in extras.corrections)
  return apply_mask(out, mask), new_memory, info, extras._replace(corrections=corrections)


@dataclasses.dataclass(frozen=True)
class DEQTransformerClassifierConfig(DEQSettings):
  """A DEQ-Transformer per-position classifier (no memory between batches, no adaptive softmax).

  Attributes:
    n_token: input symbols; n_classes: output classes (0: n_token).
    d_model, n_head, d_head, d_inner, dropout, norm, remat_attention, attention_chunks: as
      `DEQTransformerConfig`.
  """

  n_token: int
  d_model: int
  n_head: int
  d_inner: int
  n_classes: int = 0
  d_head: int | None = None
  dropout: float = 0.0
  norm: str = "weight"
  remat_attention: bool = True
  attention_chunks: int = 1

  def __post_init__(self):
    super().__post_init__()
    as_lm = DEQTransformerConfig(
      n_token=self.n_token, d_model=self.d_model, n_head=self.n_head, d_inner=self.d_inner, d_head=self.d_head,
      dropout=self.dropout, norm=self.norm, remat_attention=self.remat_attention,
      attention_chunks=self.attention_chunks,
    )  # fmt: skip
    object.__setattr__(self, "d_head", as_lm.d_head)
    if self.n_classes == 0:
      object.__setattr__(self, "n_classes", self.n_token)
    if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 1:
      raise ValueError(f"n_classes must be an int >= 1 (0: n_token); got {self.n_classes!r}.")

  @property
  def mem_len(self) -> int:
    return 0


class DEQTransformerClassifier(nnx.Module):
  """The DEQ-Transformer's embedding, injection and cell with a linear classification head.

      tokens -> Embed -> variational dropout -> injection -> z* = f(z*; u) -> f(z*) -> Linear -> logits

  Attention is causal over the whole sequence (position t sees tokens <= t); nothing is carried
  between batches.
  """

  def __init__(self, config: DEQTransformerClassifierConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embedding = nnx.Embed(c.n_token, c.d_model, rngs=rngs)
    self.injection = nnx.Linear(c.d_model, 3 * c.n_head * c.d_head, rngs=rngs)
    self.cell = DEQTransformerCell(
      c.d_model, c.n_head, c.d_head, c.d_inner, norm=c.norm, remat_attention=c.remat_attention,
      attention_chunks=c.attention_chunks, rngs=rngs,
    )  # fmt: skip
    self.head = nnx.Linear(c.d_model, c.n_classes, rngs=rngs)

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> tuple:
    """Nothing is carried between batches."""
    del batch, dtype, length
    return ()

  def __call__(
    self,
    tokens: jax.Array,
    targets: jax.Array,
    memory: tuple = (),
    *,
    dropout_key: jax.Array | None = None,
    dtype=jnp.float32,
    unrolled: bool = False,
    jac_key: jax.Array | None = None,
    **solver_overrides,
  ) -> ModelOutput:
    """Per-position cross-entropy of `targets` given `tokens` (both `[b, T]`); arguments as `DEQTransformerLM`."""
    del memory  # every sequence starts afresh
    out, _, info, extras = transformer_features(
      self, tokens, None, dropout_key, dtype, unrolled, jac_key, **solver_overrides
    )
    head = lambda o: self.head(o.astype(jnp.promote_types(dtype, jnp.float32)))
    correction_nll = None
    if extras.corrections:
      correction_nll = jnp.stack([classifier_output(head(o), targets).nll for o in extras.corrections])
    return classifier_output(
      head(out), targets, info=info, jac_loss=extras.jac_loss, correction_nll=correction_nll,
      spectral_radius=extras.spectral_radius,
    )  # fmt: skip

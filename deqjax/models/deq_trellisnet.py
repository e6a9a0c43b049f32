"""DEQ-TrellisNet language model (Bai et al., 2019), as the reference code ships it.

tokens -> embedding -> variational dropout -> causal-conv injection (zero left padding)
z* = f(z*; injection, history)   (DEQTrellisNetCell; z = {h, c}; per-sample Broyden)
output: last nout channels of h of z* (f(z*) in training) -> variational dropout -> split softmax (tied)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from deqjax._info import SolveInfo
from deqjax.nn.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax, check_cutoffs
from deqjax.nn.deq_layer import DEQSettings, cell_output, join_sub_sequences, sub_sequences
from deqjax.nn.dropout import apply_mask, variational_mask
from deqjax.nn.trellisnet_cell import DEQTrellisNetCell


@dataclasses.dataclass(frozen=True)
class DEQTrellisNetConfig(DEQSettings):
  """Architecture; the solver settings are `DEQSettings`, with the reference's caps 45 / 45 and 40 pretraining layers.

  Attributes:
    n_token: vocabulary size.
    d_embed: embedding width (= nout when the decoder is tied to the embedding).
    nhid, nout: hidden and output channels; the state has H = nhid + nout channels.
    cutoffs: split-softmax boundaries (empty: a plain tied softmax).
    dropout_input, dropout_hidden, dropout_output: variational dropout rates.
    kernel_size, dilation: of the injection (no dilation) and recurrent convolutions.
    tie_weights: the decoder is the embedding table (False: its own `[n_token, nout]`).
  """

  n_token: int
  d_embed: int
  nhid: int
  nout: int
  cutoffs: tuple[int, ...] = ()
  dropout_input: float = 0.0
  dropout_hidden: float = 0.0
  dropout_output: float = 0.0
  kernel_size: int = 2
  dilation: int = 1
  tie_weights: bool = True
  f_max_iter: int = dataclasses.field(default=45, kw_only=True)
  b_max_iter: int = dataclasses.field(default=45, kw_only=True)
  pretrain_depth: int = dataclasses.field(default=40, kw_only=True)

  def __post_init__(self):
    if self.tie_weights and self.nout != self.d_embed:
      raise ValueError(f"nout={self.nout} must equal d_embed={self.d_embed}: the decoder is tied to the embedding.")
    for name in ("kernel_size", "dilation"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
    object.__setattr__(self, "cutoffs", tuple(self.cutoffs))
    check_cutoffs(self.n_token, self.cutoffs, 1)
    for name in ("dropout_input", "dropout_hidden", "dropout_output"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}.")

  @property
  def d_state(self) -> int:
    return self.nhid + self.nout


class TrellisMemory(NamedTuple):
  """The previous segment's last state `h`, `c` `[b, 1, H]` (the reference's `z*[:, :, -1:]`)."""

  h: jax.Array
  c: jax.Array


class TrellisOutput(NamedTuple):
  nll: jax.Array  # [b, q]
  memory: TrellisMemory
  info: SolveInfo | None
  jac_loss: jax.Array | None = None  # [b] ||df/dz||_F^2 / n at z*, when asked for


class DEQTrellisNetLM(nnx.Module):
  def __init__(self, config: DEQTrellisNetConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embedding = AdaptiveEmbedding(c.n_token, c.d_embed, c.d_embed, (), 1, scale=False, rngs=rngs)
    self.cell = DEQTrellisNetCell(c.d_embed, c.d_state, kernel_size=c.kernel_size, dilation=c.dilation, rngs=rngs)
    self.softmax = ProjectedAdaptiveLogSoftmax(
      c.n_token, c.nout, c.nout, c.cutoffs, 1, tie_weights=c.tie_weights, rngs=rngs
    )

  def init_memory(self, batch: int, dtype=jnp.float32) -> TrellisMemory:
    """Zeros, as the reference's initial memory."""
    zeros = jnp.zeros((batch, 1, self.config.d_state), dtype)
    return TrellisMemory(zeros, zeros)

  def body(
    self,
    x: jax.Array,
    memory: TrellisMemory | None,
    *,
    hidden_key=None,
    mode: str = "deq",
    training: bool = False,
    jac_key=None,
    **solver_overrides,
  ):
    """Everything between the embedding and the softmax.

    Args:
      x: `[b, q, d_embed]` (dropped-out) embeddings; their dtype is the compute dtype.
      memory: the previous segment's `TrellisMemory`, or None.
      hidden_key: PRNG key of the variational mask on h (None: no dropout).
      training: a training call (the softmax reads f(z*) with `feed_fz`, z* otherwise).
      jac_key: PRNG key of the Jacobian penalty's probe (None: not computed).

    Returns:
      (output `[b, q, nout]`, the new `TrellisMemory`, the forward `SolveInfo` or None,
      the per-sample Jacobian penalty `[b]` or None).
    """
    c = self.config
    b, q, _ = x.shape
    dtype = x.dtype
    memory = self.init_memory(b, dtype) if memory is None else memory
    h_mask = variational_mask(hidden_key, b, c.d_state, c.dropout_hidden, dtype)
    injection = self.cell.injection(x)
    h_last, c_last = memory.h.astype(dtype), memory.c.astype(dtype)
    parts = []
    for start, stop in sub_sequences(q, c.subseq_len if mode == "deq" else 0):  # pretraining: whole, as the reference
      weights, inputs = self.cell.prepare(injection[:, start:stop], h_last, c_last, h_mask)
      weights = jax.tree.map(lambda w: w.astype(dtype), weights)
      z0 = {"h": jnp.zeros((b, stop - start, c.d_state), dtype), "c": jnp.zeros((b, stop - start, c.d_state), dtype)}
      parts.append(
        cell_output(
          self.cell.f, weights, inputs, z0, c, mode=mode, training=training, jac_key=jac_key, **solver_overrides
        )
      )
      h_last, c_last = parts[-1][0]["h"][:, -1:], parts[-1][0]["c"][:, -1:]  # the next one's history
    z_star, z_out, info, jac = join_sub_sequences(parts)
    new_memory = jax.lax.stop_gradient(TrellisMemory(z_star["h"][:, -1:], z_star["c"][:, -1:]))
    return z_out["h"][..., -c.nout :], new_memory, info, jac

  def __call__(
    self,
    tokens: jax.Array,
    targets: jax.Array,
    memory: TrellisMemory | None = None,
    *,
    dropout_key: jax.Array | None = None,
    mode: str = "deq",
    dtype=jnp.float32,
    jac_key: jax.Array | None = None,
    **solver_overrides,
  ) -> TrellisOutput:
    """Per-token NLL of `targets` given `tokens` (both `[b, q]`) and the previous segment's history.

    Arguments as `DEQTransformerLM.__call__` (a `dropout_key` makes it a training call).
    """
    c = self.config
    b, q = tokens.shape
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    x = apply_mask(
      self.embedding(tokens).astype(dtype), variational_mask(keys[0], b, c.d_embed, c.dropout_input, dtype)
    )
    out, new_memory, info, jac = self.body(
      x, memory, hidden_key=keys[1], mode=mode, training=dropout_key is not None, jac_key=jac_key, **solver_overrides
    )
    out = apply_mask(out, variational_mask(keys[2], b, c.nout, c.dropout_output, dtype))
    acc = jnp.promote_types(dtype, jnp.float32)
    nll = self.softmax.nll(out.reshape(b * q, -1).astype(acc), targets.reshape(-1), self.embedding)
    return TrellisOutput(nll.reshape(b, q), new_memory, info, jac)

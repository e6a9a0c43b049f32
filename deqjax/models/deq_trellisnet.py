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

from deqjax.models.output import ModelOutput
from deqjax.nn.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax, check_cutoffs
from deqjax.nn.deq_layer import DEQSettings, cell_output, check_int, join_sub_sequences, sub_sequences
from deqjax.nn.dropout import apply_mask, variational_mask
from deqjax.nn.trellisnet_cell import DEQTrellisNetCell
from deqjax.nn.weight_norm import check_norm


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
    norm: the cell's convolutions' normalisation: "weight" (the reference's weight norm) or
      "spectral" (each kernel, as a `[taps * d_in, d_out]` matrix, divided by its largest singular
      value: a stability lever, not the reference).
    injection_norm: the injection convolution's normalisation, if not `norm`'s (None). It acts on
      the input only, not on z, so it has no part in df/dz: "weight" keeps the injection's gains
      (and their scale) while the recurrent convolution is spectrally normalised.
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
  norm: str = "weight"
  injection_norm: str | None = None
  max_iter: int = dataclasses.field(default=45, kw_only=True)
  backward_max_iter: int = dataclasses.field(default=45, kw_only=True)
  pretrain_depth: int = dataclasses.field(default=40, kw_only=True)

  def __post_init__(self):
    super().__post_init__()
    check_norm(self.norm)
    if self.injection_norm is not None:
      check_norm(self.injection_norm, "injection_norm")
    for name in ("d_embed", "nhid", "nout"):
      check_int(name, getattr(self, name), low=1)
    check_int("n_token", self.n_token, low=0)  # 0: set from the data by the experiments
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


class DEQTrellisNetLM(nnx.Module):
  def __init__(self, config: DEQTrellisNetConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embedding = AdaptiveEmbedding(c.n_token, c.d_embed, c.d_embed, (), 1, scale=False, rngs=rngs)
    self.cell = DEQTrellisNetCell(
      c.d_embed,
      c.d_state,
      kernel_size=c.kernel_size,
      dilation=c.dilation,
      norm=c.norm,
      injection_norm=c.injection_norm,
      rngs=rngs,
    )
    self.softmax = ProjectedAdaptiveLogSoftmax(
      c.n_token, c.nout, c.nout, c.cutoffs, 1, tie_weights=c.tie_weights, rngs=rngs
    )

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> TrellisMemory:
    """Zeros, as the reference's initial memory (one position, whatever `length`)."""
    del length
    zeros = jnp.zeros((batch, 1, self.config.d_state), dtype)
    return TrellisMemory(zeros, zeros)

  def body(
    self, x, memory: TrellisMemory | None, *, dropout_key=None, unrolled=False, jac_key=None, **solver_overrides
  ):
    """Everything between the embedding and the output dropout.

    Args:
      x: `[b, q, d_embed]` (dropped-out) embeddings; their dtype is the compute dtype.
      memory: the previous segment's `TrellisMemory`, or None.
      dropout_key: PRNG key of the variational mask on h (None: no dropout, and the softmax
        reads z*, not f(z*)).
      unrolled: apply the cell `pretrain_depth` times instead of solving.
      jac_key: PRNG key of the Jacobian penalty's probe (None: not computed).

    Returns:
      (output `[b, q, nout]`, the new `TrellisMemory`, the forward `SolveInfo` or None, the
      `CellExtras`: the per-sample Jacobian penalty `[b]` or None, the fixed-point correction's
      outputs, each `[b, q, nout]`).
    """
    c = self.config
    b, q, _ = x.shape
    dtype = x.dtype
    memory = self.init_memory(b, dtype) if memory is None else memory
    h_mask = variational_mask(dropout_key, b, c.d_state, c.dropout_hidden, dtype)
    injection = self.cell.injection(x)
    h_last, c_last = memory.h.astype(dtype), memory.c.astype(dtype)
    parts = []
    for start, stop in sub_sequences(q, 0 if unrolled else c.subseq_len):  # unrolled: whole, as the reference
      weights, inputs = self.cell.prepare(injection[:, start:stop], h_last, c_last, h_mask)
      weights = jax.tree.map(lambda w: w.astype(dtype), weights)
      z0 = {"h": jnp.zeros((b, stop - start, c.d_state), dtype), "c": jnp.zeros((b, stop - start, c.d_state), dtype)}
      parts.append(
        cell_output(
          self.cell.f, weights, inputs, z0, c, unrolled=unrolled, training=dropout_key is not None, jac_key=jac_key,
          **solver_overrides,
        )
      )  # fmt: skip
      h_last, c_last = parts[-1][0]["h"][:, -1:], parts[-1][0]["c"][:, -1:]  # the next one's history
    z_star, z_out, info, extras = join_sub_sequences(parts)
    new_memory = jax.lax.stop_gradient(TrellisMemory(z_star["h"][:, -1:], z_star["c"][:, -1:]))
    corrections = tuple(o["h"][..., -c.nout :] for o in extras.corrections)
    return z_out["h"][..., -c.nout :], new_memory, info, extras._replace(corrections=corrections)

  def __call__(
    self,
    tokens: jax.Array,
    targets: jax.Array,
    memory: TrellisMemory | None = None,
    *,
    dropout_key: jax.Array | None = None,
    dtype=jnp.float32,
    unrolled: bool = False,
    jac_key: jax.Array | None = None,
    **solver_overrides,
  ) -> ModelOutput:
    """Per-token NLL of `targets` given `tokens` (both `[b, q]`) and the previous segment's history.

    Arguments as `DEQTransformerLM.__call__` (a `dropout_key` makes it a training call).
    """
    c = self.config
    b, q = tokens.shape
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    x = apply_mask(
      self.embedding(tokens).astype(dtype), variational_mask(keys[0], b, c.d_embed, c.dropout_input, dtype)
    )
    out, new_memory, info, extras = self.body(
      x, memory, dropout_key=keys[1], unrolled=unrolled, jac_key=jac_key, **solver_overrides
    )
    mask = variational_mask(keys[2], b, c.nout, c.dropout_output, dtype)
    acc = jnp.promote_types(dtype, jnp.float32)
    flat_targets = targets.reshape(-1)

    def nll(o):
      return self.softmax.nll(apply_mask(o, mask).reshape(b * q, -1).astype(acc), flat_targets, self.embedding)

    correction_nll = jnp.stack([nll(o).reshape(b, q) for o in extras.corrections]) if extras.corrections else None
    return ModelOutput(
      nll(out).reshape(b, q), new_memory, info, extras.jac_loss, correction_nll=correction_nll,
      spectral_radius=extras.spectral_radius,
    )  # fmt: skip

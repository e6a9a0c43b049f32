"""Per-position sequence classifiers for synthetic tasks (copy memory): a causal TCN, an LSTM and a GRU.

Each maps tokens `[b, T]` to logits `[b, T, n_classes]` and scores targets
`[b, T]`, returning a `ModelOutput` with its logits. Their call signature is every
model's (`deqjax.models.output`), with an empty memory: one sequence is one example,
nothing is carried between batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from deqjax.models.output import ModelOutput, refuse_deq_options
from deqjax.nn.dropout import apply_mask, variational_mask
from deqjax.nn.weight_norm import WeightNormConv1D, causal_conv


def classifier_output(logits: jax.Array, targets: jax.Array, **fields) -> ModelOutput:
  """Per-position cross-entropy of `targets` `[b, T]` under `logits` `[b, T, c]`, in at least float32."""
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"targets {targets.shape} must match the logits' leading axes {logits.shape[:-1]}.")
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return ModelOutput(nll, memory=(), logits=logits, **fields)


def _check_positive(owner: str, **values) -> None:
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{owner}: {name} must be an int >= 1; got {name}={value!r}.")


def _check_tokens(tokens: jax.Array) -> None:
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"tokens must be an integer array [batch, length]; got {tokens.dtype} {tokens.shape}.")


# ----------------------------------------------------------------------------- TCN


@dataclasses.dataclass(frozen=True)
class TCNConfig:
  """A causal temporal convolutional network (Bai et al., 2018).

  Attributes:
    n_token: input symbols (one-hot inputs).
    n_classes: output classes (0: n_token).
    channels: width of every level.
    levels: residual blocks; block i dilates by 2^i, so the receptive field is
      1 + 2 (kernel - 1)(2^levels - 1).
    kernel: taps per convolution.
    dropout: channel dropout after each convolution (one mask per sequence).
  """

  n_token: int
  channels: int
  levels: int
  kernel: int
  n_classes: int = 0
  dropout: float = 0.0

  def __post_init__(self):
    _check_positive("TCNConfig", n_token=self.n_token, channels=self.channels, levels=self.levels, kernel=self.kernel)
    if self.n_classes == 0:
      object.__setattr__(self, "n_classes", self.n_token)
    _check_positive("TCNConfig", n_classes=self.n_classes)
    if not 0 <= self.dropout < 1:
      raise ValueError(f"TCNConfig: dropout must be in [0, 1); got {self.dropout}.")

  @property
  def receptive_field(self) -> int:
    return 1 + 2 * (self.kernel - 1) * (2**self.levels - 1)


class TemporalBlock(nnx.Module):
  """relu(x' + res(x)), x' = drop(relu(conv2(drop(relu(conv1(x)))))) with dilated causal, weight-normalised convs."""

  def __init__(self, d_in: int, d_out: int, kernel: int, dilation: int, *, rngs: nnx.Rngs):
    self.conv1 = WeightNormConv1D(d_in, d_out, kernel, rngs=rngs)
    self.conv2 = WeightNormConv1D(d_out, d_out, kernel, rngs=rngs)
    self.residual = nnx.Linear(d_in, d_out, rngs=rngs) if d_in != d_out else None
    self.dilation = dilation

  def __call__(self, x: jax.Array, masks=(None, None)) -> jax.Array:
    """x `[b, T, d_in]` -> `[b, T, d_out]`; masks: two variational dropout masks (or None)."""
    h = x
    for conv, mask in ((self.conv1, masks[0]), (self.conv2, masks[1])):
      weights = conv.weights()
      history = jnp.zeros((h.shape[0], (weights["kernel"].shape[0] - 1) * self.dilation, h.shape[2]), h.dtype)
      h = apply_mask(jax.nn.relu(causal_conv(weights, h, history, dilation=self.dilation)), mask)
    res = x if self.residual is None else self.residual(x)
    return jax.nn.relu(h + res)


class TCN(nnx.Module):
  def __init__(self, config: TCNConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    widths = [c.n_token] + [c.channels] * c.levels
    self.blocks = nnx.List(TemporalBlock(widths[i], widths[i + 1], c.kernel, 2**i, rngs=rngs) for i in range(c.levels))
    self.head = nnx.Linear(c.channels, c.n_classes, rngs=rngs)

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> tuple:
    del batch, dtype, length
    return ()

  def __call__(
    self, tokens, targets, memory=(), *, dropout_key=None, dtype=jnp.float32, unrolled=False, jac_key=None, **solver
  ) -> ModelOutput:
    """Cross-entropy of `targets` given `tokens` (both `[b, T]`); position t sees tokens <= t only."""
    del memory
    refuse_deq_options("TCN", unrolled, jac_key, solver)
    c = self.config
    _check_tokens(tokens)
    b = tokens.shape[0]
    keys = [None] * (2 * c.levels) if dropout_key is None else list(jax.random.split(dropout_key, 2 * c.levels))
    h = jax.nn.one_hot(tokens, c.n_token, dtype=dtype)
    for i, block in enumerate(self.blocks):
      masks = tuple(variational_mask(k, b, c.channels, c.dropout, dtype) for k in keys[2 * i : 2 * i + 2])
      h = block(h, masks)
    return classifier_output(self.head(h), targets)


# ----------------------------------------------------------------------------- LSTM / GRU

RECURRENT_CELLS = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
  """A one-layer recurrent classifier over one-hot inputs.

  Attributes:
    cell: "lstm" or "gru".
    n_token: input symbols.
    hidden: state width.
    n_classes: output classes (0: n_token).
  """

  cell: str
  n_token: int
  hidden: int
  n_classes: int = 0

  def __post_init__(self):
    if self.cell not in RECURRENT_CELLS:
      raise ValueError(f"RecurrentConfig: unknown cell={self.cell!r}; expected one of {sorted(RECURRENT_CELLS)}.")
    _check_positive("RecurrentConfig", n_token=self.n_token, hidden=self.hidden)
    if self.n_classes == 0:
      object.__setattr__(self, "n_classes", self.n_token)
    _check_positive("RecurrentConfig", n_classes=self.n_classes)


class RecurrentClassifier(nnx.Module):
  def __init__(self, config: RecurrentConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.cell = RECURRENT_CELLS[c.cell](c.n_token, c.hidden, rngs=rngs)
    self.head = nnx.Linear(c.hidden, c.n_classes, rngs=rngs)

  def init_memory(self, batch: int, dtype=jnp.float32, length: int = 0) -> tuple:
    del batch, dtype, length
    return ()

  def __call__(
    self, tokens, targets, memory=(), *, dropout_key=None, dtype=jnp.float32, unrolled=False, jac_key=None, **solver
  ) -> ModelOutput:
    """Cross-entropy of `targets` given `tokens` (both `[b, T]`), the state starting at zero."""
    del memory, dropout_key
    refuse_deq_options("RecurrentClassifier", unrolled, jac_key, solver)
    c = self.config
    _check_tokens(tokens)
    zeros = jnp.zeros((tokens.shape[0], c.hidden), dtype)
    carry = (zeros, zeros) if c.cell == "lstm" else zeros  # LSTM: (c, h)
    inputs = jax.nn.one_hot(tokens.T, c.n_token, dtype=dtype)  # time-major [T, b, n_token]
    _, states = jax.lax.scan(lambda carry, x: self.cell(carry, x), carry, inputs)
    return classifier_output(self.head(jnp.swapaxes(states, 0, 1)), targets)

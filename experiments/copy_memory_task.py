"""The copy-memory task for the common training loop: batches from (seed, step), a fixed held-out set.

The reported loss is the cross-entropy per position averaged over all T + 20
positions of the held-out sequences, as in the paper's Table 1; evaluation also
reports the loss on the ten recall positions and how many recalled digits are
right.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deqjax.data import copy_memory
from experiments.train import Runtime, local_rows, model_forward, to_global


class CopyMemoryTask:
  result_name = "test_loss"

  def __init__(self, config: ml_collections.ConfigDict):
    d = config.data
    self.config = config
    self.T = d.T
    self.length = copy_memory.sequence_length(d.T)
    if d.heldout_size < 1 or d.heldout_size % config.eval_batch_size:
      raise ValueError(
        f"data.heldout_size={d.heldout_size} must be a positive multiple of eval_batch_size={config.eval_batch_size}."
      )
    self.heldout = copy_memory.heldout_set(d.heldout_seed, d.heldout_size, d.T)
    self.tokens_per_step = config.batch_size * self.length

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> tuple[CopyMemoryTask, ml_collections.ConfigDict]:
    """The task; model.n_token (and n_classes) 0 become the task's 10 symbols, other values must be 10."""
    config = config.copy_and_resolve_references()
    for field in ("n_token", "n_classes"):
      value = config.model.get(field, None)
      if value == 0:
        config.model[field] = copy_memory.N_SYMBOLS
      elif value is not None and value != copy_memory.N_SYMBOLS:
        raise ValueError(
          f"config.model.{field}={value}, but the copy-memory task has {copy_memory.N_SYMBOLS} symbols"
          " (set it to 10, or 0 to take it from the task)."
        )
    return cls(config), config

  def identity(self) -> dict:
    d = self.config.data
    return {"task": "copy_memory", "T": d.T, "heldout_size": d.heldout_size, "heldout_seed": d.heldout_seed}

  def check_identity(self, saved: dict, step: int) -> None:
    if saved != self.identity():
      raise ValueError(
        f"The checkpoint at step {step} was trained on {saved}; the config now asks for {self.identity()}."
        " Use the same data settings, or a fresh workdir."
      )

  def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    c = self.config
    return copy_memory.train_batch(c.seed, step, c.batch_size, self.T, rows=local_rows(c.batch_size))

  def epoch(self, step: int) -> int:
    del step
    return 0  # an endless stream: every batch is new

  def validate(self, rt: Runtime, params, mode: str) -> dict:
    return evaluate_heldout(rt, params, mode, self.heldout)

  def test(self, rt: Runtime, params, mode: str) -> float:
    return evaluate_heldout(rt, params, mode, self.heldout)["heldout_loss"]


def _eval_step(rt: Runtime, mode: str, params, tokens, targets):
  """Summed over the batch: NLL of all positions, NLL of the recall positions, correct recalled digits."""
  out = model_forward(rt, params, tokens, targets, None, key=None, mode=mode)
  recall = slice(-copy_memory.N_COPY, None)
  correct = jnp.argmax(out.logits[:, recall], axis=-1) == targets[:, recall]
  return jnp.sum(out.nll), jnp.sum(out.nll[:, recall]), jnp.sum(correct)


def evaluate_heldout(rt: Runtime, params, mode: str, heldout: tuple[np.ndarray, np.ndarray]) -> dict:
  """heldout_loss (mean over all positions), recall_loss (mean over the ten recall positions), digit_accuracy."""
  inputs, targets = heldout
  c = rt.config
  step = rt.jitted(("copy_eval", mode), functools.partial(_eval_step, rt, mode))
  start, stop = local_rows(c.eval_batch_size)
  totals = np.zeros(3)
  for first in range(0, inputs.shape[0], c.eval_batch_size):
    rows = slice(first + start, first + stop)
    x, y = (to_global(a[rows], rt.batch_sharding, c.eval_batch_size) for a in (inputs, targets))
    totals += np.asarray(jax.device_get(step(params, x, y)), np.float64)
  n = inputs.shape[0]
  return {
    "heldout_loss": totals[0] / (n * inputs.shape[1]),
    "recall_loss": totals[1] / (n * copy_memory.N_COPY),
    "digit_accuracy": totals[2] / (n * copy_memory.N_COPY),
  }

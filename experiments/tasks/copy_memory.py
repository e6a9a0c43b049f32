"""The copy-memory task: training batches from (seed, step), a fixed held-out set.

The reported loss is the cross-entropy per position averaged over all T + 20
positions of the held-out sequences, as in the paper's Table 1; evaluation also
reports the loss on the ten recall positions and how many recalled digits are
right. Validation reads the same held-out set as the test, as the benchmark does,
unless `data.valid_seed` names a separate one (needed to select parameters on
validation: `test_params="best_valid"`).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from deqjax.data import copy_memory
from experiments.tasks.base import EvalSet, local_rows


class CopyMemoryTask:
  result_name = "test_loss"
  selection_name = "heldout_loss"

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
    # A separate validation set when data.valid_seed is set (config_check refuses it equal to heldout_seed).
    self.valid_seed = d.get("valid_seed", -1)
    self.validation = (
      copy_memory.heldout_set(self.valid_seed, d.heldout_size, d.T) if self.valid_seed >= 0 else self.heldout
    )
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
    identity = {"task": "copy_memory", "T": d.T, "heldout_size": d.heldout_size, "heldout_seed": d.heldout_seed}
    # Listed only when set, so that checkpoints of runs before the field existed still resume.
    return {**identity, "valid_seed": self.valid_seed} if self.valid_seed >= 0 else identity

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

  def eval_set(self, final: bool) -> EvalSet:
    """The held-out sequences, eval_batch_size at a time: the test's, or for validation (`final` False) those of
    `data.valid_seed` when it is set."""
    inputs, targets = self.heldout if final else self.validation
    size = self.config.eval_batch_size
    start, stop = local_rows(size)

    def batches():
      for first in range(0, inputs.shape[0], size):
        rows = slice(first + start, first + stop)
        yield inputs[rows], targets[rows]

    return EvalSet(batches, size, carry_memory=False)

  def batch_sums(self, out, targets) -> dict:
    """NLL of all positions, NLL of the recall positions, correct recalled digits, sequences."""
    recall = slice(-copy_memory.N_COPY, None)
    correct = jnp.argmax(out.logits[:, recall], axis=-1) == targets[:, recall]
    return {
      "nll": jnp.sum(out.nll),
      "recall_nll": jnp.sum(out.nll[:, recall]),
      "correct": jnp.sum(correct).astype(jnp.float32),
      "sequences": jnp.asarray(targets.shape[0], jnp.float32),
    }

  def summarize(self, sums: dict, final: bool) -> dict:
    """heldout_loss (mean over all positions), recall_loss (mean over the ten recall positions), digit_accuracy;
    the final results carry the same under test_ names (test_loss is the paper's Table 1 number)."""
    recalled = sums["sequences"] * copy_memory.N_COPY
    loss = sums["nll"] / (sums["sequences"] * self.length)
    recall, accuracy = sums["recall_nll"] / recalled, sums["correct"] / recalled
    if final:
      return {"test_loss": loss, "test_recall_loss": recall, "test_digit_accuracy": accuracy}
    return {"heldout_loss": loss, "recall_loss": recall, "digit_accuracy": accuracy}

"""What a training task provides the trainer with; nothing here depends on the trainer.

A task owns its data: the training batches as a function of the step, and the evaluation
sets with the sums that score them. The trainer owns the model, the sharding, the jitting and
the loop: it runs the model on each evaluation batch, adds up the task's `batch_sums` and hands
the totals back to `summarize`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Protocol

import jax
import ml_collections
import numpy as np

from deqjax.models import ModelOutput


def local_rows(batch: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch of `batch` rows that this process loads."""
  per_process = batch // jax.process_count()
  start = jax.process_index() * per_process
  return start, start + per_process


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation pass: its batches (this process's rows) and how the model reads them.

  Attributes:
    batches: a fresh iterator of (inputs, targets) host arrays `[rows of this process, length]`.
    batch_size: global rows per batch.
    carry_memory: the model's memory is carried from one batch to the next (ordered LM
      segments); otherwise every batch starts from an empty memory.
  """

  batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
  batch_size: int
  carry_memory: bool


class Task(Protocol):
  """A training task: data, data identity, evaluation sets and their scores."""

  result_name: str  # the final result's name ("test_ppl"); main prints `<result_name>=<value>`
  selection_name: str  # the validation result that selects parameters ("valid_ppl"; lower is better)
  tokens_per_step: int  # tokens of one global training batch

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> tuple[Task, ml_collections.ConfigDict]:
    """(task, `config` with its data-derived fields resolved); reads or makes the data."""

  def identity(self) -> dict:
    """JSON-able description of the data; a checkpoint made on other data does not resume."""

  def check_identity(self, saved: dict, step: int) -> None:
    """Raises ValueError when the checkpoint at `step` (identity `saved`) was made on other data."""

  def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of training step `step`: this process's rows."""

  def epoch(self, step: int) -> int:
    """The data epoch training step `step` reads."""

  def eval_set(self, final: bool) -> EvalSet:
    """The periodic validation set (`final` False) or the final test set (True)."""

  def batch_sums(self, out: ModelOutput, targets) -> dict:
    """Traced: named sums over one evaluation batch (global arrays), added up over the batches."""

  def summarize(self, sums: dict, final: bool) -> dict:
    """Named scalar results from the summed `batch_sums`; the final ones include `result_name`."""

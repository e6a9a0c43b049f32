"""The copy-memory task of the TCN benchmark (Bai, Kolter & Koltun, 2018), T = 400 in the DEQ paper.

One sequence of length T + 2 n_copy (n_copy = 10) over 10 symbols:

    inputs   d_1 .. d_10 | 0 x (T - 1) | 9 | 0 x 10           digits d_i uniform in 1..8
    targets  0 x (T + 10)                  | d_1 .. d_10

0 is the blank, 9 the delimiter. The model must reproduce the ten digits it saw
T + 10 positions earlier. A model without memory predicts the blanks (their
positions are fixed) and guesses the digits, scoring n_copy ln 8 / (T + 2 n_copy)
(`memoryless_loss`). Batches are a function of (seed, step), so a resumed run
sees the same data; the held-out set comes from its own seed stream.
"""

from __future__ import annotations

import math

import numpy as np

BLANK = 0
DELIMITER = 9
N_SYMBOLS = 10
N_DIGITS = 8  # digits are drawn from 1..8
N_COPY = 10

_TRAIN_STREAM, _HELDOUT_STREAM = 0, 1


def _check(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}; got {name}={value!r}.")


def sequence_length(T: int) -> int:
  """Length of one copy-memory sequence: T + 2 * N_COPY."""
  _check("T", T, 1)
  return T + 2 * N_COPY


def copy_memory_sequences(rng: np.random.Generator, batch: int, T: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets), both int32 `[batch, T + 20]`, drawn from `rng`."""
  _check("batch", batch, 1)
  length = sequence_length(T)
  digits = rng.integers(1, N_DIGITS + 1, size=(batch, N_COPY), dtype=np.int32)
  inputs = np.full((batch, length), BLANK, np.int32)
  inputs[:, :N_COPY] = digits
  inputs[:, T + N_COPY - 1] = DELIMITER
  targets = np.full((batch, length), BLANK, np.int32)
  targets[:, -N_COPY:] = digits
  return inputs, targets


def train_batch(
  seed: int, step: int, batch: int, T: int, rows: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Training batch `step` of the run seeded `seed`: `[batch, T + 20]` each (or the rows `rows` of it).

  Every step has its own generator, so the batch depends on (seed, step) only; `rows`
  lets each process load its slice of the same global batch.
  """
  _check("step", step, 0)
  rng = np.random.default_rng((seed, _TRAIN_STREAM, step))
  inputs, targets = copy_memory_sequences(rng, batch, T)
  if rows is None:
    return inputs, targets
  return inputs[rows[0] : rows[1]], targets[rows[0] : rows[1]]


def heldout_set(seed: int, size: int, T: int) -> tuple[np.ndarray, np.ndarray]:
  """The fixed held-out sequences of seed `seed`: `[size, T + 20]` each, from a stream independent of training."""
  return copy_memory_sequences(np.random.default_rng((seed, _HELDOUT_STREAM)), size, T)


def memoryless_loss(T: int) -> float:
  """Cross-entropy per position of the best predictor without memory: N_COPY ln 8 / (T + 20)."""
  return N_COPY * math.log(N_DIGITS) / sequence_length(T)

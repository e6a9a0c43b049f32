"""The ordered language-model stream of Transformer-XL: parallel token streams cut into segments.

The token stream of N tokens is trimmed to `batch_size * S` tokens and reshaped
to `[batch_size, S]`: row i is the i-th contiguous stretch of text. Segment j
holds columns `[j * tgt_len, (j + 1) * tgt_len)` as inputs and the next
column range as targets, so consecutive segments continue each row's text and
a memory carried from one segment to the next sees the preceding context.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class OrderedLMStream:
  """Deterministic, random-access segments of an ordered token stream.

  Args:
    tokens: `[N]` int token ids.
    batch_size: number of parallel streams (rows).
    tgt_len: segment length.
    rows: optional `(start, stop)` slice of the rows this process loads
      (multi-host data parallelism); the stream layout is that of the whole batch.

  Training uses `segment(step)`: segment indices wrap around the epoch, so the
  data position is a function of the step alone and is restored exactly.
  Evaluation uses `eval_segments()`, which also yields the last, shorter segment.
  """

  def __init__(self, tokens: np.ndarray, batch_size: int, tgt_len: int, rows: tuple[int, int] | None = None):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise TypeError(f"tokens must be a 1-D integer array; got {tokens.dtype} with shape {tokens.shape}.")
    for name, value in (("batch_size", batch_size), ("tgt_len", tgt_len)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {name}={value!r}.")
    columns = tokens.size // batch_size
    if columns < tgt_len + 1:
      raise ValueError(
        f"A stream of {tokens.size} tokens gives {batch_size} rows of {columns} tokens: too short for one"
        f" segment of tgt_len={tgt_len} (needs tgt_len + 1 = {tgt_len + 1} per row)."
      )
    start, stop = (0, batch_size) if rows is None else rows
    if not 0 <= start < stop <= batch_size:
      raise ValueError(f"rows={rows!r} must be a non-empty slice of range({batch_size}).")
    self.data = tokens[: columns * batch_size].reshape(batch_size, columns)[start:stop].astype(np.int32)
    self.batch_size, self.tgt_len = batch_size, tgt_len
    self.num_segments = (columns - 1) // tgt_len  # full-length segments per epoch
    self.num_tokens = columns * batch_size

  def segment(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each `[rows, tgt_len]`, of training segment `index` (wrapping over epochs)."""
    start = (index % self.num_segments) * self.tgt_len
    return self.data[:, start : start + self.tgt_len], self.data[:, start + 1 : start + 1 + self.tgt_len]

  def epoch(self, index: int) -> int:
    return index // self.num_segments

  def eval_segments(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every segment once, in order, the last one shorter; together they predict all but each row's first token."""
    columns = self.data.shape[1]
    for start in range(0, columns - 1, self.tgt_len):
      stop = min(start + self.tgt_len, columns - 1)
      yield self.data[:, start:stop], self.data[:, start + 1 : stop + 1]

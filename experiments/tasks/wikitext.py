"""WikiText language modelling: ordered training segments, memory-cached perplexity."""

from __future__ import annotations

import hashlib
import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from deqjax.data import OrderedLMStream, WikitextData, load_wikitext
from experiments.tasks.base import EvalSet, local_rows


def load_data(config: ml_collections.ConfigDict) -> WikitextData:
  d = config.data
  if not d.manual_dir:
    raise ValueError("config.data.manual_dir is empty; point it at the folder with the wiki.*.tokens files.")
  return load_wikitext(d.name, d.manual_dir, d.data_dir or None)


def resolve_vocab(config: ml_collections.ConfigDict, data: WikitextData) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.n_token is the data's vocabulary size (0 means: take it from the data)."""
  config = config.copy_and_resolve_references()
  n_token = config.model.n_token
  if n_token == 0:
    config.model.n_token = len(data.vocab)
  elif n_token != len(data.vocab):
    raise ValueError(
      f"config.model.n_token={n_token} but the {data.name!r} vocabulary has {len(data.vocab)} types;"
      " set n_token to match (or to 0 to take it from the data)."
    )
  return config


def vocab_digest(vocab) -> str:
  return hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:16]


class WikitextTask:
  """Ordered segments of the training text; perplexity over eval_batch_size ordered streams, memory carried."""

  result_name = "test_ppl"
  selection_name = "valid_ppl"

  def __init__(self, config: ml_collections.ConfigDict, data: WikitextData):
    self.config, self.data = config, data
    self.stream = OrderedLMStream(
      data.splits["train"], config.batch_size, config.tgt_len, rows=local_rows(config.batch_size)
    )
    self.tokens_per_step = config.batch_size * config.tgt_len

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> tuple[WikitextTask, ml_collections.ConfigDict]:
    data = load_data(config)
    config = resolve_vocab(config, data)
    return cls(config, data), config

  def identity(self) -> dict:
    return {
      "dataset": self.data.name,
      "vocab_size": len(self.data.vocab),
      "vocab_digest": vocab_digest(self.data.vocab),
    }

  def check_identity(self, saved: dict, step: int) -> None:
    now = self.identity()
    if saved != now:
      raise ValueError(
        f"The checkpoint at step {step} was trained on a vocabulary of {saved['vocab_size']} types ({saved['dataset']},"
        f" digest {saved['vocab_digest']}); the data now gives {now['vocab_size']} ({now['dataset']},"
        f" digest {now['vocab_digest']}). Use the same dataset, or a fresh workdir."
      )

  def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    return self.stream.segment(step)

  def epoch(self, step: int) -> int:
    return self.stream.epoch(step)

  def split_set(self, split: str, max_segments: int = 0) -> EvalSet:
    """eval_batch_size ordered streams of `split` in segments of eval_tgt_len (max_segments 0: all of them)."""
    c = self.config
    stream = OrderedLMStream(
      self.data.splits[split], c.eval_batch_size, c.eval_tgt_len, rows=local_rows(c.eval_batch_size)
    )

    def batches():
      for k, batch in enumerate(stream.eval_segments()):
        if max_segments and k >= max_segments:
          return
        yield batch

    return EvalSet(batches, c.eval_batch_size, carry_memory=True)

  def eval_set(self, final: bool) -> EvalSet:
    """Validation: the first eval_max_segments segments of the validation split; test: all of the test split."""
    return self.split_set("test") if final else self.split_set("validation", self.config.eval_max_segments)

  def batch_sums(self, out, targets) -> dict:
    return {"nll": jnp.sum(out.nll.astype(jnp.float32)), "tokens": jnp.asarray(targets.size, jnp.float32)}

  def summarize(self, sums: dict, final: bool) -> dict:
    ppl = math.exp(sums["nll"] / sums["tokens"])
    return {"test_ppl": ppl} if final else {"valid_ppl": ppl}

"""Shared pieces of the copy-memory configs (the paper's Table 1, T = 400)."""

import ml_collections

from deqjax.data.copy_memory import N_SYMBOLS
from experiments.configs.training import add_copy_memory_training

# The paper's Table 1: test loss and parameter count per row.
PAPER = {
  "deq_transformer_classifier": (3.5e-6, "14K"),
  "tcn": (2.7e-5, "16K"),
  "lstm": (0.0501, "14K"),
  "gru": (0.0491, "14K"),
}


def base(row: str, model_name: str, mode: str, model: dict, **training) -> ml_collections.ConfigDict:
  """A copy-memory config: the model, how it runs, batch 32 of T = 400, AdamW; `training` overrides."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.mode = mode
  config.model = ml_collections.ConfigDict({"n_token": N_SYMBOLS, **model})
  loss, params = PAPER[row]
  config.paper = ml_collections.ConfigDict(dict(row=row, loss=loss, params=params))
  fields = dict(
    batch_size=32,
    eval_batch_size=100,
    learning_rate=1e-3,
    warmup_steps=100,
    grad_clip=1.0,
    log_every_steps=50,
    eval_every_steps=250,
    checkpoint_every_steps=250,
  )
  return add_copy_memory_training(config, **{**fields, **training})

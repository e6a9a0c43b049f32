"""Shared pieces of the copy-memory configs (the paper's Table 1, T = 400)."""

import ml_collections

from deqjax.data.copy_memory import N_SYMBOLS
from experiments.configs.fields import add_copy_memory_training


def base(row: str, model_name: str, execution: str, model: dict, **training) -> ml_collections.ConfigDict:
  """A copy-memory config: its row name, the model, how it runs, batch 32 of T = 400, AdamW; `training` overrides."""
  config = ml_collections.ConfigDict()
  config.study, config.row = "copy_memory", row
  config.model_name = model_name
  config.execution = execution
  config.model = ml_collections.ConfigDict({"n_token": N_SYMBOLS, **model})
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

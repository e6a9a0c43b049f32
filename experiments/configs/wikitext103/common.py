"""Shared pieces of the WikiText-103 configs (vocabulary, cutoffs, the reference's recipes)."""

import ml_collections

from experiments.configs.fields import add_training

# The reference's recipes (DEQ_REFERENCE.md §4-5): Adam, linear warmup then cosine to 0,
# global-norm clipping, a shallow weight-tied pretraining phase, memory-cached evaluation.
TRANSFORMER_WT103 = dict(
  batch_size=56,
  tgt_len=150,
  eval_batch_size=4,
  eval_tgt_len=150,
  learning_rate=2.5e-4,
  warmup_steps=16_000,
  num_train_steps=300_000,
  grad_clip=0.25,
  pretrain_steps=16_000,
)
TRELLISNET_WT103 = dict(
  batch_size=49,
  tgt_len=100,
  eval_batch_size=4,
  eval_tgt_len=100,
  learning_rate=1e-3,
  warmup_steps=0,
  num_train_steps=300_000,
  grad_clip=0.07,
  pretrain_steps=30_000,
)

N_TOKEN = 267_735  # WikiText-103 vocabulary built from the training split
ADAPTIVE_CUTOFFS = (20000, 40000, 200000)
TRELLIS_SPLITS = (2800, 20000, 76000)


def base(row: str, model_name: str, execution: str, model: dict):
  """A config: its row name, which model, how it is run, its architecture, the reference's training recipe."""
  config = ml_collections.ConfigDict()
  config.study, config.row = "wikitext103", row
  config.model_name = model_name
  config.execution = execution
  config.model = ml_collections.ConfigDict(model)
  recipe = TRELLISNET_WT103 if model_name == "deq_trellisnet" else TRANSFORMER_WT103
  pretrain = recipe["pretrain_steps"] if execution == "deq" else 0
  return add_training(
    config, "wikitext103", **{**recipe, "pretrain_steps": pretrain}, eval_every_steps=4000, checkpoint_every_steps=4000
  )

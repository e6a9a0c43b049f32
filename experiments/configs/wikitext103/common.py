"""Shared pieces of the WikiText-103 configs (vocabulary, cutoffs, the reference's recipes)."""

import ml_collections

from experiments.configs.fields import TRANSFORMER_WT103, TRELLISNET_WT103, add_training

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

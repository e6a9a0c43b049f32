"""Shared pieces of the WikiText-103 configs (vocabulary, cutoffs, the paper's table rows)."""

import ml_collections

from experiments.configs.training import TRANSFORMER_WT103, TRELLISNET_WT103, add_training

N_TOKEN = 267_735  # WikiText-103 vocabulary built from the training split
ADAPTIVE_CUTOFFS = (20000, 40000, 200000)
TRELLIS_SPLITS = (2800, 20000, 76000)


def base(
  model_name: str, mode: str, model: dict, paper_params_m: float, paper_non_embedding_m: float, paper_memory_gb: float
):
  """A config: which model, how it is run, its architecture, the reference's training recipe, the paper's row."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.mode = mode
  config.model = ml_collections.ConfigDict(model)
  config.paper = ml_collections.ConfigDict(
    dict(params_m=paper_params_m, non_embedding_m=paper_non_embedding_m, memory_gb=paper_memory_gb)
  )
  recipe = TRELLISNET_WT103 if model_name == "deq_trellisnet" else TRANSFORMER_WT103
  pretrain = recipe["pretrain_steps"] if mode == "deq" else 0
  return add_training(
    config, "wikitext103", **{**recipe, "pretrain_steps": pretrain}, eval_every_steps=4000, checkpoint_every_steps=4000
  )

"""Shared pieces of the WikiText-2 comparison: equal parameters, equal time (docs/results/wikitext2.md).

The recipe and why: docs/notes/wikitext2_recipe.md.
"""

import ml_collections

from experiments.configs.default import SAMPLE_DIR
from experiments.configs.fields import add_training

N_TOKEN = 13_777  # types in the WikiText-2 validation file (with <eos> and <unk>)
TRAIN_BUDGET_SECONDS = 900.0
DEPTH = 16  # unrolled depth of the weight-tied baselines (the DEQ rows solve with caps of 24)

# The DEQ-Transformer cell of the CPU default (experiments/configs/default.py).
TRANSFORMER_CELL = dict(n_token=N_TOKEN, d_model=64, n_head=4, d_inner=256, dropout=0.1, mem_len=32)
TRELLIS_CELL = dict(
  n_token=N_TOKEN, d_embed=32, nhid=64, nout=32, dropout_input=0.1, dropout_hidden=0.1, dropout_output=0.1
)
DEQ_SOLVER = dict(max_iter=DEPTH, backward_max_iter=DEPTH, rtol=1e-3, backward_rtol=1e-3)


def base(row: str, model_name: str, execution: str, model: dict, **training) -> ml_collections.ConfigDict:
  """A WikiText-2 comparison config: its row name, the model, how it runs, the shared recipe; `training` overrides."""
  config = ml_collections.ConfigDict()
  config.study, config.row = "wikitext2", row
  config.model_name = model_name
  config.execution = execution
  config.model = ml_collections.ConfigDict(model)
  fields = dict(
    batch_size=16,
    tgt_len=32,
    eval_batch_size=4,
    eval_tgt_len=64,
    eval_max_segments=40,
    learning_rate=1e-3,
    warmup_steps=200,
    grad_clip=0.25,
    train_budget_seconds=TRAIN_BUDGET_SECONDS,
    log_every_steps=25,
    eval_every_steps=250,
    checkpoint_every_steps=250,
  )
  config = add_training(config, "wikitext2_sample", **{**fields, **training})
  config.data.manual_dir = SAMPLE_DIR
  return config

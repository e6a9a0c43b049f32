"""Shared pieces of the equal-parameter, equal-time WikiText-2 comparison (the README's results section).

Every row trains on the WikiText-2 validation file (the bundled sample: vocabulary from that
text, 13,777 types; test words it lacks become `<unk>`) and is evaluated on the test file, for
the same wall-clock budget: TRAIN_BUDGET_SECONDS of training steps on one CPU core (the
README's commands pin each run to a core). `num_train_steps` of each row is what that row fits
into the budget at its measured speed (a little more, so that the budget is what stops it);
the cosine schedule decays to 0 there.

The transformer rows have the same non-embedding parameters (66,880 = one DEQ cell): the DEQ,
the same cell unrolled 16 times with weights tied (the paper's weight-tied baseline depth), and
a 4-layer untied Transformer-XL with narrower layers (as the paper's small Transformer-XL). The
TrellisNet rows share one cell (99,840): the DEQ and the cell unrolled 16 times.

Recipe (all rows): batch 16 x 32, AdamW 1e-3 with 200 warmup steps and cosine decay, clip 0.25,
dropout 0.1; the DEQs pretrain the unrolled cell for about a tenth of their steps, then solve with
Broyden (caps 16 / 16, relative tolerance 1e-3) and the Jacobian penalty 0.5. With the CPU
default's 2e-3 and no penalty, the DEQ-Transformer's solves stopped converging ~100 steps after
the switch (forward residual 0.18 at its cap, backward 0.72) and the tied 16-layer model's
gradient norm spiked to 66.
"""

import ml_collections

from experiments.configs.default import SAMPLE_DIR
from experiments.configs.fields import add_training

N_TOKEN = 13_777  # types in the WikiText-2 validation file (with <eos> and <unk>)
TRAIN_BUDGET_SECONDS = 900.0
DEPTH = 16  # unrolled depth of the weight-tied baselines, and the DEQs' forward / backward solver caps

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

r"""The CPU default: a small DEQ-Transformer on the bundled WikiText-2 sample; learns within minutes.

python -m experiments.main --config=experiments/configs/default.py --workdir=/tmp/deqjax_default

Training text: the WikiText-2 validation file (bundled); validation and test: the test file.
The cell's linear maps are spectrally normalised and the caps are 24 / 24: with them 99 % of the
DEQ steps reach the equilibrium forward and backward (with the reference's weight norm and caps
of 16, 21 %), at a lower test perplexity and the same step time (docs/results/stability.md).
What it prints, measured: docs/training.md ("The main job, measured").
"""

import os

import ml_collections

from experiments.configs.fields import add_training

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "wikitext-2")


def get_config():
  config = ml_collections.ConfigDict()
  config.model_name = "deq_transformer"
  config.study, config.row = "default", "default"
  config.execution = "deq"
  config.model = ml_collections.ConfigDict(
    dict(
      n_token=0,
      d_model=64,
      n_head=4,
      d_inner=256,
      dropout=0.1,
      mem_len=32,
      max_iter=24,
      backward_max_iter=24,
      rtol=1e-3,
      backward_rtol=1e-3,
      pretrain_depth=2,
      norm="spectral",
    )
  )
  add_training(
    config,
    "wikitext2_sample",
    batch_size=16,
    tgt_len=32,
    eval_batch_size=4,
    eval_tgt_len=64,
    eval_max_segments=40,
    learning_rate=2e-3,
    warmup_steps=50,
    num_train_steps=600,
    grad_clip=0.25,
    pretrain_steps=100,
    log_every_steps=25,
    eval_every_steps=200,
    checkpoint_every_steps=100,
  )
  config.data.manual_dir = SAMPLE_DIR
  return config

r"""Transformer-XL small, weight-tied 16 layers: the DEQ-Transformer small cell unrolled 16 times.

python -m experiments.count_params --config=experiments/configs/transformer_xl_small_tied_16l.py
"""

from experiments.configs import deq_transformer_small


def get_config():
  config = deq_transformer_small.get_config()
  config.mode = "unrolled"
  config.model.pretrain_depth = 16
  config.paper.memory_gb = 6.8  # the paper's row: 138M / 4.5M, like the DEQ-Transformer small
  return config

r"""Transformer-XL small, weight-tied 16 layers: the DEQ-Transformer small cell unrolled 16 times.

python -m experiments.count_params --config=experiments/configs/wikitext103/transformer_xl_small_tied_16l.py
"""

from experiments.configs.wikitext103 import deq_transformer_small


def get_config():
  config = deq_transformer_small.get_config()
  config.row = "transformer_xl_small_tied_16l"
  config.execution = "unrolled"
  config.model.pretrain_depth = 16
  return config

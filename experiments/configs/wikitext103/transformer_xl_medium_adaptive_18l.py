r"""Transformer-XL medium, 18 untied layers, adaptive embedding (sized to the table's 110M / 72M).

python -m experiments.count_params --config=experiments/configs/wikitext103/transformer_xl_medium_adaptive_18l.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "transformer_xl_medium_adaptive_18l",
    "transformer_xl",
    "layers",
    dict(
      n_token=N_TOKEN,
      d_model=1024,
      n_head=8,
      d_head=64,
      d_inner=680,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=4,
      dropout=0.05,
      mem_len=150,
      n_layer=18,
    ),
  )

r"""Transformer-XL medium, 16 untied layers (sized to the table's 165M / 44M).

python -m experiments.count_params --config=experiments/configs/wikitext103/transformer_xl_medium_16l.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "transformer_xl_medium_16l",
    "transformer_xl",
    "layers",
    dict(
      n_token=N_TOKEN,
      d_model=450,
      n_head=10,
      d_inner=1930,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=1,
      dropout=0.05,
      mem_len=150,
      n_layer=16,
    ),
  )

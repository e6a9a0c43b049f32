r"""Transformer-XL small, 4 untied layers (sized to the table's 139M / 4.9M).

python -m experiments.count_params --config=experiments/configs/wikitext103/transformer_xl_small_4l.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "transformer_xl_small_4l",
    "transformer_xl",
    "layers",
    dict(
      n_token=N_TOKEN,
      d_model=500,
      n_head=4,
      d_head=50,
      d_inner=725,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=1,
      dropout=0.05,
      mem_len=150,
      n_layer=4,
    ),
  )

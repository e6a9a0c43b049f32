r"""DEQ-Transformer small (not shipped by the reference; sized to the table's 138M / 4.5M).

python -m experiments.count_params --config=experiments/configs/wikitext103/deq_transformer_small.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "deq_transformer_small",
    "deq_transformer",
    "deq",
    dict(
      n_token=N_TOKEN,
      d_model=500,
      n_head=10,
      d_inner=2500,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=1,
      dropout=0.05,
      mem_len=150,
      max_iter=30,
      backward_max_iter=40,
      pretrain_depth=2,
    ),
  )

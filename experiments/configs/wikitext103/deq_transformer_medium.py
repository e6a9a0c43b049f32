r"""DEQ-Transformer medium, non-adaptive (not shipped by the reference; sized to the table's 172M / 43M).

python -m experiments.count_params --config=experiments/configs/wikitext103/deq_transformer_medium.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "deq_transformer_medium",
    "deq_transformer",
    "deq",
    dict(
      n_token=N_TOKEN,
      d_model=480,
      n_head=8,
      d_inner=42900,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=1,
      dropout=0.05,
      mem_len=150,
      max_iter=30,
      backward_max_iter=40,
      pretrain_depth=2,
    ),
  )

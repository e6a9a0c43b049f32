r"""DEQ-Transformer medium, non-adaptive (not shipped by the reference; sized to the table's 172M / 43M).

python -m experiments.count_params --config=experiments/configs/deq_transformer_medium.py
"""

from experiments.configs.wt103 import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
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
      f_max_iter=30,
      b_max_iter=40,
      pretrain_depth=2,
    ),
    paper_params_m=172,
    paper_non_embedding_m=43,
    paper_memory_gb=2.7,
  )

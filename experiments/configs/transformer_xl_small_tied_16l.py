r"""Transformer-XL small, weight-tied 16 layers: the DEQ-Transformer small cell unrolled 16 times.

python -m experiments.count_params --config=experiments/configs/transformer_xl_small_tied_16l.py
"""

from experiments.configs.wt103 import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "deq_transformer",
    "unrolled",
    dict(
      n_token=N_TOKEN,
      d_model=500,
      n_head=10,
      d_inner=2500,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=1,
      dropout=0.05,
      mem_len=150,
      pretrain_depth=16,
    ),
    paper_params_m=138,
    paper_non_embedding_m=4.5,
    paper_memory_gb=6.8,
  )

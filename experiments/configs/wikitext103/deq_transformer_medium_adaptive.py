r"""DEQ-Transformer medium, adaptive: the reference's shipped config (97,691,888 params).

python -m experiments.count_params --config=experiments/configs/wikitext103/deq_transformer_medium_adaptive.py
"""

from experiments.configs.wikitext103.common import ADAPTIVE_CUTOFFS, N_TOKEN, base


def get_config():
  return base(
    "deq_transformer_medium_adaptive",
    "deq_transformer",
    "deq",
    dict(
      n_token=N_TOKEN,
      d_model=700,
      n_head=10,
      d_head=70,
      d_inner=48000,
      cutoffs=ADAPTIVE_CUTOFFS,
      div_val=4,
      dropout=0.05,
      mem_len=150,
      max_iter=30,
      backward_max_iter=40,
      pretrain_depth=2,
      subseq_len=75,  # the reference's --subseq_len: segments of 150 solved in two halves
    ),
  )

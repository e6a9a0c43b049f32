r"""70-layer TrellisNet: the DEQ-TrellisNet cell unrolled 70 times (TrellisNet is weight-tied by design).

python -m experiments.count_params --config=experiments/configs/trellisnet_70l.py
"""

from experiments.configs.wt103 import N_TOKEN, TRELLIS_SPLITS, base


def get_config():
  return base(
    "deq_trellisnet",
    "unrolled",
    dict(
      n_token=N_TOKEN,
      d_embed=500,
      nhid=1500,
      nout=500,
      cutoffs=TRELLIS_SPLITS,
      dropout_input=0.1,
      dropout_hidden=0.1,
      dropout_output=0.1,
      pretrain_depth=70,
    ),
    paper_params_m=180,
    paper_non_embedding_m=45,
    paper_memory_gb=24.7,
  )

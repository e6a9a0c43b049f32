r"""DEQ-TrellisNet: the reference's shipped config (174,168,738 params).

python -m experiments.count_params --config=experiments/configs/deq_trellisnet.py
"""

from experiments.configs.wt103 import N_TOKEN, TRELLIS_SPLITS, base


def get_config():
  return base(
    "deq_trellisnet",
    "deq",
    dict(
      n_token=N_TOKEN,
      d_embed=500,
      nhid=1500,
      nout=500,
      cutoffs=TRELLIS_SPLITS,
      dropout_input=0.1,
      dropout_hidden=0.1,
      dropout_output=0.1,
      f_max_iter=45,
      b_max_iter=45,
      pretrain_depth=40,
      subseq_len=50,  # the reference's --subseq_len: segments of 100 solved in two halves
    ),
    paper_params_m=180,
    paper_non_embedding_m=45,
    paper_memory_gb=3.3,
  )

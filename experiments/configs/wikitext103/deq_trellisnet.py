r"""DEQ-TrellisNet: the reference's shipped config (174,168,738 params).

python -m experiments.count_params --config=experiments/configs/wikitext103/deq_trellisnet.py
"""

from experiments.configs.wikitext103.common import N_TOKEN, TRELLIS_SPLITS, base


def get_config():
  return base(
    "deq_trellisnet",
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
      max_iter=45,
      backward_max_iter=45,
      pretrain_depth=40,
      subseq_len=50,  # the reference's --subseq_len: segments of 100 solved in two halves
    ),
  )

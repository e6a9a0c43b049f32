r"""WikiText-2 comparison: the DEQ-TrellisNet (99,840 non-embedding parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/deq_trellisnet.py --workdir=workdirs/wikitext2/deq_trellisnet
"""

from experiments.configs.wikitext2.common import DEQ_SOLVER, TRELLIS_CELL, base


def get_config():
  model = {**TRELLIS_CELL, **DEQ_SOLVER, "pretrain_depth": 8}
  return base("deq_trellisnet", "deq_trellisnet", "deq", model, num_train_steps=5000, pretrain_steps=500, jac_reg=0.5)

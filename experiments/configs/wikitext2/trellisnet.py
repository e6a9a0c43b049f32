r"""WikiText-2 comparison: the DEQ-TrellisNet's cell unrolled 16 times (a 16-layer TrellisNet; 99,840 parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/trellisnet.py --workdir=workdirs/wikitext2/trellisnet
"""

from experiments.configs.wikitext2.common import DEPTH, TRELLIS_CELL, base


def get_config():
  model = {**TRELLIS_CELL, "pretrain_depth": DEPTH}
  return base("trellisnet", "deq_trellisnet", "unrolled", model, num_train_steps=3000)

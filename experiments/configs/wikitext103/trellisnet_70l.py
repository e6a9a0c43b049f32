r"""70-layer TrellisNet: the DEQ-TrellisNet cell unrolled 70 times (TrellisNet is weight-tied by design).

python -m experiments.count_params --config=experiments/configs/wikitext103/trellisnet_70l.py
"""

from experiments.configs.wikitext103 import deq_trellisnet


def get_config():
  config = deq_trellisnet.get_config()
  config.row = "trellisnet_70l"
  config.execution = "unrolled"
  config.model.pretrain_depth = 70
  return config

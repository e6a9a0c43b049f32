r"""70-layer TrellisNet: the DEQ-TrellisNet cell unrolled 70 times (TrellisNet is weight-tied by design).

python -m experiments.count_params --config=experiments/configs/trellisnet_70l.py
"""

from experiments.configs import deq_trellisnet


def get_config():
  config = deq_trellisnet.get_config()
  config.mode = "unrolled"
  config.model.pretrain_depth = 70
  config.paper.memory_gb = 24.7  # the paper's row: 180M / 45M, like the DEQ-TrellisNet
  return config

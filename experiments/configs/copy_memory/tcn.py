r"""Copy memory (T = 400), a causal TCN: 8 levels of 11 channels, kernel 8 (receptive field 3,571).

python -m experiments.main --config=experiments/configs/copy_memory/tcn.py --workdir=results/copy_memory/tcn
"""

from experiments.configs.copy_memory.common import base


def get_config():
  return base("tcn", "tcn", "layers", dict(channels=11, levels=8, kernel=8), num_train_steps=6000)

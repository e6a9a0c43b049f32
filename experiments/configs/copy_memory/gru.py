r"""Copy memory (T = 400), a GRU with 62 hidden units over one-hot inputs.

python -m experiments.main --config=experiments/configs/copy_memory/gru.py --workdir=results/copy_memory/gru
"""

from experiments.configs.copy_memory.common import base


def get_config():
  return base("gru", "recurrent", "layers", dict(cell="gru", hidden=62), num_train_steps=6000)

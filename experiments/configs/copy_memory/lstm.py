r"""Copy memory (T = 400), an LSTM with 53 hidden units over one-hot inputs.

python -m experiments.main --config=experiments/configs/copy_memory/lstm.py --workdir=results/copy_memory/lstm
"""

from experiments.configs.copy_memory.common import base


def get_config():
  return base("lstm", "recurrent", "layers", dict(cell="lstm", hidden=53), num_train_steps=6000)

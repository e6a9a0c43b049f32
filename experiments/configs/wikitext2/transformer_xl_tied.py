r"""WikiText-2 comparison: the DEQ-Transformer's cell unrolled 16 times with tied weights (66,880 parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/transformer_xl_tied.py --workdir=workdirs/wikitext2/transformer_xl_tied
"""

from experiments.configs.wikitext2.common import DEPTH, TRANSFORMER_CELL, base


def get_config():
  model = {**TRANSFORMER_CELL, "pretrain_depth": DEPTH}
  return base("transformer_xl_tied", "deq_transformer", "unrolled", model, num_train_steps=2400)

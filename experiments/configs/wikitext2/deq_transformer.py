r"""WikiText-2 comparison: the DEQ-Transformer (the CPU default's cell; 66,880 non-embedding parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/deq_transformer.py --workdir=workdirs/wikitext2/deq_transformer
"""

from experiments.configs.wikitext2.common import DEQ_SOLVER, TRANSFORMER_CELL, base


def get_config():
  model = {**TRANSFORMER_CELL, **DEQ_SOLVER, "pretrain_depth": 2}
  return base("deq_transformer", "deq_transformer", "deq", model, num_train_steps=4700, pretrain_steps=400, jac_reg=0.5)

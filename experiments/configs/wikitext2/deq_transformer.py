r"""WikiText-2 comparison: the DEQ-Transformer (the CPU default's cell; 66,880 non-embedding parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/deq_transformer.py --workdir=workdirs/wikitext2/deq_transformer

A light Jacobian penalty (0.1) with caps of 24: the earlier penalty of 0.5 kept every solve within
6-9 steps but held the model back to the weight-tied baseline's perplexity; 0.1 at caps of 16 scored
6 % better but left 16 % of its DEQ steps with a sample at the cap (docs/notes/wikitext2_recipe.md).
"""

from experiments.configs.wikitext2.common import DEQ_SOLVER, TRANSFORMER_CELL, base


def get_config():
  model = {**TRANSFORMER_CELL, **DEQ_SOLVER, "pretrain_depth": 2, "max_iter": 24, "backward_max_iter": 24}
  return base("deq_transformer", "deq_transformer", "deq", model, num_train_steps=2300, pretrain_steps=300, jac_reg=0.1)

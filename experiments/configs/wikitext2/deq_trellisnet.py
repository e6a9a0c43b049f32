r"""WikiText-2 comparison: the DEQ-TrellisNet (99,456 non-embedding parameters: the baseline's cell, 99,840,
less the 384 gains of the recurrent convolution's weight norm, which its spectral norm does not have).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/deq_trellisnet.py --workdir=workdirs/wikitext2/deq_trellisnet

A spectrally normalised recurrent convolution, caps of 24 and the Jacobian penalty keep its solves at
the equilibrium: with weight norm and caps of 16 its forward solve sat at the cap with residual ~0.1 for
the first ~1,000 DEQ steps (docs/results/wikitext2.md). The injection convolution, which acts on the
input and not on z, keeps weight norm (`injection_norm`): 372.5 against the baseline's 420.4 on the mean
of three seeds, where with it spectrally normalised too the row ended 13 % behind (466.9 against 412.7
with seed 0; docs/notes/wikitext2_recipe.md).
Its DEQ steps are dearer than the baseline's, so fewer fit the budget (num_train_steps is what fits).
"""

from experiments.configs.wikitext2.common import DEQ_SOLVER, TRELLIS_CELL, base


def get_config():
  model = {
    **TRELLIS_CELL,
    **DEQ_SOLVER,
    "pretrain_depth": 8,
    "norm": "spectral",
    "injection_norm": "weight",
    "max_iter": 24,
    "backward_max_iter": 24,
  }
  return base("deq_trellisnet", "deq_trellisnet", "deq", model, num_train_steps=2800, pretrain_steps=500, jac_reg=0.5)

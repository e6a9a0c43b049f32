r"""WikiText-2 comparison: the DEQ-TrellisNet (99,072 non-embedding parameters: the baseline's cell, 99,840,
less the 768 gains of weight norm, which its spectral norm does not have).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/deq_trellisnet.py --workdir=workdirs/wikitext2/deq_trellisnet

Spectrally normalised convolutions, caps of 24 and the Jacobian penalty keep its solves at the
equilibrium: with weight norm and caps of 16 its forward solve sat at the cap with residual ~0.1 for
the first ~1,000 DEQ steps (docs/results/wikitext2.md). With them the DEQ steps are dearer than the
baseline's, so fewer fit the budget (num_train_steps is what fits).
"""

from experiments.configs.wikitext2.common import DEQ_SOLVER, TRELLIS_CELL, base


def get_config():
  model = {
    **TRELLIS_CELL,
    **DEQ_SOLVER,
    "pretrain_depth": 8,
    "norm": "spectral",
    "max_iter": 24,
    "backward_max_iter": 24,
  }
  return base("deq_trellisnet", "deq_trellisnet", "deq", model, num_train_steps=2800, pretrain_steps=500, jac_reg=0.5)

r"""Copy memory (T = 400), DEQ-Transformer: the language models' cell and DEQ layer with a classification head.

python -m experiments.main --config=experiments/configs/copy_memory_deq_transformer.py --workdir=/tmp/copy_deq

Recipe (found on this task; DEQ_REFERENCE.md ships none for it): the 2-layer weight-tied
unrolled cell first (it solves the task by step ~600), then the DEQ with a Jacobian penalty
of weight 0.5, which keeps the forward / backward Broyden solves near their tolerance while the
DEQ relearns the copy. Without the penalty the DEQ phase relearns the copy too, but its backward
solves stop at a relative residual of ~0.3 and the loss stalls near 4e-3. Once the copy is back
(step 1,300) the penalty drops to 0.05: at 0.5 it outweighs the task loss ~8:1 and holds the
held-out loss near 5e-4 (falling 1.5 % per 100 steps); at 0.05 it falls ~8 % per 50 steps.
"""

from experiments.configs.copy_memory import base


def get_config():
  model = dict(d_model=32, n_head=2, d_inner=72, f_max_iter=12, b_max_iter=12, f_tol=1e-3, b_tol=1e-3)
  return base(
    "deq_transformer_classifier",
    "deq_transformer_classifier",
    "deq",
    model,
    num_train_steps=2600,
    pretrain_steps=781,
    jac_reg=0.5,
    jac_reg_until_step=1300,
    jac_reg_after=0.05,
    eval_every_steps=100,
  )

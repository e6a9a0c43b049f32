r"""Copy memory (T = 400), DEQ-Transformer: the language models' cell and DEQ layer with a classification head.

python -m experiments.main --config=experiments/configs/copy_memory_deq_transformer.py --workdir=/tmp/copy_deq

Recipe (found on this task; DEQ_REFERENCE.md ships none for it): the 2-layer weight-tied
unrolled cell first (it solves the task by step ~600), then the DEQ with a Jacobian penalty
of weight 0.5, which keeps the forward / backward Broyden solves near their tolerance while the
DEQ relearns the copy. Without the penalty the DEQ phase relearns the copy too, but its backward
solves stop at a relative residual of ~0.3 and the loss stalls near 4e-3. At 0.5 the penalty
outweighs the task loss ~8:1 late in training and the held-out loss creeps (5e-4 at step 2,400);
dropping it to 0.05 with `jac_reg_until_step` / `jac_reg_after` helps late (step 2,454, learning
rate < 1e-4: 5.0e-4 -> 4.1e-4 in 96 steps, solves still converged) but not early (from step
1,300 of 2,600: both solves at their caps, backward residual 0.08-0.2, test 4.5e-4); see README.
"""

from experiments.configs.copy_memory import base


def get_config():
  model = dict(d_model=32, n_head=2, d_inner=72, f_max_iter=12, b_max_iter=12, f_tol=1e-3, b_tol=1e-3)
  return base(
    "deq_transformer_classifier",
    "deq_transformer_classifier",
    "deq",
    model,
    num_train_steps=3000,
    pretrain_steps=781,
    jac_reg=0.5,
    eval_every_steps=100,
  )

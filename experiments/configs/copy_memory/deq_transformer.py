r"""Copy memory (T = 400), DEQ-Transformer: the language models' cell and DEQ layer with a classification head.

python -m experiments.main --config=experiments/configs/copy_memory/deq_transformer.py --workdir=/tmp/copy_deq

Recipe (found on this task; DEQ_REFERENCE.md ships none for it): the 2-layer weight-tied
unrolled cell first (it solves the task by step ~600), then the DEQ with a Jacobian penalty
of weight 0.5, which keeps the forward / backward Broyden solves near their tolerance while the
DEQ relearns the copy. Late in that phase the penalty term outweighs the task loss several times
over; at step 2,400 (learning rate ~4e-4 and falling) it drops to 0.05 and the held-out loss
falls several times faster (3.8e-4 -> 1.6e-4 in 200 steps), the solves still converged. Dropping
it early instead (step 1,300) leaves both solves at their caps and the loss stalls near 4.5e-4;
without any penalty the backward solves stop at a relative residual of ~0.3 and the loss stalls
near 4e-3. Each gradient's norm is bounded by 3x the running average of the previous ones
(grad_clip_ratio), so that a bad batch late in training cannot move the weights by much. The
cosine schedule runs to step 4,200, but `train_budget_seconds` (the issue's 2-hour budget on
the 2-core CPU) stops training near step 3,550 (learning rate ~6e-5 there; held-out 9.56e-5
when measured, seed 0). With `--config.seed=1` the same recipe ends at 1.57e-4 (the whole
schedule, 7,084 s): the target is met on one of the two seeds run. See the README's
copy-memory section.
"""

from experiments.configs.copy_memory.common import base


def get_config():
  model = dict(
    d_model=32, n_head=2, d_inner=72, max_iter=12, backward_max_iter=12, rtol=1e-3, backward_rtol=1e-3, pretrain_depth=2
  )
  return base(
    "deq_transformer",
    "deq_transformer_classifier",
    "deq",
    model,
    num_train_steps=4200,
    pretrain_steps=781,
    jac_reg=0.5,
    jac_reg_until_step=2400,
    jac_reg_after=0.05,
    train_budget_seconds=7200,
    eval_every_steps=200,
    grad_clip_ratio=3.0,
  )

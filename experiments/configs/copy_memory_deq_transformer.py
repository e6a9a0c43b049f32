r"""Copy memory (T = 400), DEQ-Transformer: the language models' cell and DEQ layer with a classification head.

python -m experiments.main --config=experiments/configs/copy_memory_deq_transformer.py --workdir=/tmp/copy_deq
"""

from experiments.configs.copy_memory import base


def get_config():
  model = dict(d_model=32, n_head=2, d_inner=72, f_max_iter=12, b_max_iter=12, f_tol=1e-3, b_tol=1e-3)
  return base(
    "deq_transformer_classifier", "deq_transformer_classifier", "deq", model, num_train_steps=3000, pretrain_steps=200
  )

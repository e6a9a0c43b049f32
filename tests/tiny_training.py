"""The tiny training config shared by the end-to-end tests (the default config, shrunk)."""

from experiments.configs import default

TINY = dict(batch_size=8, tgt_len=16, eval_batch_size=4, eval_tgt_len=32, eval_max_segments=4)
TINY_MODEL = dict(d_model=32, n_head=2, d_inner=64, mem_len=16, f_max_iter=8, b_max_iter=8)


def tiny_config(tfds_dir, **overrides):
  config = default.get_config()
  config.update({**TINY, **overrides})
  config.model.update(TINY_MODEL)
  config.data.data_dir = str(tfds_dir)
  return config

r"""WikiText-2 comparison: a 4-layer untied Transformer-XL, narrower layers (66,816 non-embedding parameters).

taskset -c 0 python -m experiments.main \
  --config=experiments/configs/wikitext2/transformer_xl_untied.py --workdir=workdirs/wikitext2/transformer_xl_untied

The embedding and softmax are the DEQ rows' (width 64, projected to d_model 30).
"""

from experiments.configs.wikitext2.common import N_TOKEN, base


def get_config():
  model = dict(n_token=N_TOKEN, d_embed=64, d_model=30, n_head=2, d_inner=192, dropout=0.1, mem_len=32, n_layer=4)
  return base("transformer_xl_untied", "transformer_xl", "layers", model, num_train_steps=4000)

"""The training, evaluation and data fields every experiment config carries (conventional names)."""

import ml_collections

# Fields every task's config carries, with their defaults (docs/training.md describes each).
COMMON = dict(
  seed=0,
  batch_size=8,
  eval_batch_size=4,
  learning_rate=1e-3,
  warmup_steps=0,
  num_train_steps=1000,
  train_budget_seconds=0.0,
  grad_clip=0.25,
  grad_clip_ratio=0.0,
  grad_clip_ratio_decay=0.98,
  weight_decay=0.0,
  pretrain_steps=0,
  jac_reg=0.0,
  jac_reg_until_step=0,
  jac_reg_after=0.0,
  pretrain_jac_reg=0.0,
  pretrain_settle_iters=0,
  pretrain_settle_from_step=0,
  pretrain_settle_until_step=0,
  dtype="float32",
  log_every_steps=50,
  eval_every_steps=1000,
  checkpoint_every_steps=1000,
  keep_checkpoints=3,
  max_nonfinite_steps=20,
)


def add_training(config: ml_collections.ConfigDict, dataset: str, **values) -> ml_collections.ConfigDict:
  """Adds the WikiText task's fields (`COMMON` and the language model's) to `config`, overridden by `values`.

  `dataset` is the TFDS config of the `wikitext` builder. Every field is described once, in
  docs/training.md ("Config fields").
  """
  config.task = "wikitext"
  config.data = ml_collections.ConfigDict(dict(name=dataset, manual_dir="", data_dir=""))
  lm = dict(tgt_len=64, eval_tgt_len=64, eval_mem_len=-1, eval_max_segments=0)
  return _add_fields(config, {**COMMON, **lm}, values)


def add_copy_memory_training(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Adds the copy-memory task's fields (`COMMON` and `data.{T, heldout_size, heldout_seed}`); docs/training.md."""
  config.task = "copy_memory"
  config.data = ml_collections.ConfigDict(dict(T=400, heldout_size=1000, heldout_seed=1234))
  return _add_fields(config, COMMON, values)


def _add_fields(config, fields: dict, values: dict) -> ml_collections.ConfigDict:
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"Unknown training field(s) {unknown}; known: {sorted(fields)}.")
  config.update({**fields, **values})
  return config

"""The training, evaluation and data fields every experiment config carries (conventional names)."""

import ml_collections

# The reference's recipes (DEQ_REFERENCE.md §4-5): Adam, linear warmup then cosine to 0,
# global-norm clipping, a shallow weight-tied pretraining phase, memory-cached evaluation.
TRANSFORMER_WT103 = dict(
  batch_size=56,
  tgt_len=150,
  eval_batch_size=4,
  eval_tgt_len=150,
  learning_rate=2.5e-4,
  warmup_steps=16_000,
  num_train_steps=300_000,
  grad_clip=0.25,
  pretrain_steps=16_000,
)
TRELLISNET_WT103 = dict(
  batch_size=49,
  tgt_len=100,
  eval_batch_size=4,
  eval_tgt_len=100,
  learning_rate=1e-3,
  warmup_steps=0,
  num_train_steps=300_000,
  grad_clip=0.07,
  pretrain_steps=30_000,
)


# Fields every task's config carries (see add_training for their meaning).
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
  """Adds the WikiText task's data / optimisation / bookkeeping fields to `config`, overridden by `values`.

  Fields:
    task: "wikitext".
    data.name: TFDS config of the `wikitext` builder ("wikitext103", "wikitext2", "wikitext2_sample").
    data.manual_dir: folder with the wiki.*.tokens files (or the official zip).
    data.data_dir: where TFDS keeps the prepared dataset ("" = TFDS's default).
    seed: parameters, dropout and probes all derive from it.
    batch_size, tgt_len: global batch (split over devices) and segment length.
    eval_batch_size, eval_tgt_len, eval_mem_len: memory-cached evaluation (eval_mem_len -1: the model's).
    eval_max_segments: periodic validation reads at most this many segments (0: all); the final
      test always reads all.
    learning_rate, warmup_steps, num_train_steps, grad_clip, weight_decay: AdamW, linear warmup then
      cosine to 0 at num_train_steps, global-norm clipping.
    grad_clip_ratio, grad_clip_ratio_decay: after that clip, a gradient's norm is also bounded
      by grad_clip_ratio times the running average (weight of the past grad_clip_ratio_decay) of
      the previous clipped norms (`experiments.clipping`); grad_clip_ratio 0: off.
    train_budget_seconds: stop training (then test) once the training steps have taken this much
      wall-clock time, summed over resumed runs (0: no budget; num_train_steps still caps).
    pretrain_steps: DEQ models train the unrolled weight-tied cell (pretrain_depth layers) first.
    jac_reg: weight gamma of the Jacobian penalty ||df/dz||_F^2 / n (0: off).
    jac_reg_until_step, jac_reg_after: from step jac_reg_until_step on, gamma is jac_reg_after
      (jac_reg_until_step 0: jac_reg for the whole run). Steps whose gamma is 0 skip the penalty.
    pretrain_jac_reg: weight of the same penalty, at the last unrolled state, while the cell
      trains unrolled (pretraining, or mode "unrolled"); 0: off. It asks the unrolled map to
      contract, so that iterating it past its trained depth settles instead of drifting.
    pretrain_settle_iters, pretrain_settle_from_step, pretrain_settle_until_step: unrolled steps
      start from z0 iterated K times without gradient (`deqjax.nn.solve_cell`'s settle_iters), K
      rising linearly from 0 at the first step to pretrain_settle_iters at the second (a jump
      at pretrain_settle_from_step if until <= from); pretrain_settle_iters 0: off.
    dtype: compute dtype of the cell ("float32" or "bfloat16").
    log_every_steps, eval_every_steps, checkpoint_every_steps, keep_checkpoints: bookkeeping.
    max_nonfinite_steps: consecutive skipped (non-finite) steps after which the run stops.
  """
  config.task = "wikitext"
  config.data = ml_collections.ConfigDict(dict(name=dataset, manual_dir="", data_dir=""))
  lm = dict(tgt_len=64, eval_tgt_len=64, eval_mem_len=-1, eval_max_segments=0)
  return _add_fields(config, {**COMMON, **lm}, values)


def add_copy_memory_training(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Adds the copy-memory task's fields (the common ones of `add_training`, plus the task's).

  Fields:
    task: "copy_memory".
    data.T: blanks between the digits and their recall (sequences are T + 20 long).
    data.heldout_size, data.heldout_seed: the fixed held-out sequences the reported loss is measured on.
    eval_batch_size: held-out sequences per evaluation batch.
  """
  config.task = "copy_memory"
  config.data = ml_collections.ConfigDict(dict(T=400, heldout_size=1000, heldout_seed=1234))
  return _add_fields(config, COMMON, values)


def _add_fields(config, fields: dict, values: dict) -> ml_collections.ConfigDict:
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"Unknown training field(s) {unknown}; known: {sorted(fields)}.")
  config.update({**fields, **values})
  return config

"""The training, evaluation and data fields every experiment config carries, and what each allows."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

# Fields every task's config carries, with their defaults (docs/training.md describes each).
COMMON = dict(
  seed=0,
  batch_size=8,
  eval_batch_size=4,
  learning_rate=1e-3,
  warmup_steps=0,
  num_train_steps=1000,
  lr_decay_steps=0,
  lr_anneal_from_step=0,
  train_budget_seconds=0.0,
  train_budget_clock="wall",
  grad_clip=0.25,
  grad_clip_ratio=0.0,
  grad_clip_ratio_decay=0.98,
  weight_decay=0.0,
  pretrain_steps=0,
  jac_reg=0.0,
  jac_reg_from_step=0,
  jac_reg_until_step=0,
  jac_reg_after=0.0,
  jac_reg_prob=1.0,
  correction_weight=0.0,
  correction_until_step=0,
  train_max_iter_delta=0,
  eval_max_iter=0,
  test_params="last",
  ema_decay=0.0,
  ema_from_step=0,
  warn_backward_failures=0.1,
  warn_eval_failures=0.01,
  spectral_radius_every=0,
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


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config field allows: a kind ("int", "float", "str", "bool") and a range or a set of values."""

  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False  # the bound itself is excluded
  high_open: bool = False
  choices: tuple = ()
  note: str = ""  # what special values mean, e.g. "0: never"

  def allowed(self) -> str:
    """The rule in words, e.g. "an int >= 1 (0: never)"."""
    if self.choices:
      text = f"one of {list(self.choices)}"
    else:
      text = {"int": "an int", "float": "a number", "str": "a string", "bool": "a bool"}[self.kind]
      if self.low is not None and self.high is not None:
        text += f" in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
      elif self.low is not None:
        text += f" {'>' if self.low_open else '>='} {self.low}"
      elif self.high is not None:
        text += f" {'<' if self.high_open else '<='} {self.high}"
    return f"{text} ({self.note})" if self.note else text

  def accepts(self, value) -> bool:
    if self.kind == "bool":
      ok = isinstance(value, bool)
    elif self.kind == "str":
      ok = isinstance(value, str)
    elif isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
      ok = False
    else:
      ok = math.isfinite(value)
      if ok and self.low is not None:
        ok = value > self.low if self.low_open else value >= self.low
      if ok and self.high is not None:
        ok = value < self.high if self.high_open else value <= self.high
    return ok and (not self.choices or value in self.choices)


INT_AT_LEAST_0, INT_AT_LEAST_1 = Rule("int", low=0), Rule("int", low=1)
NUMBER_AT_LEAST_0 = Rule("float", low=0)

# What each field of `COMMON` allows (cross-field rules: experiments.trainer.config_check).
COMMON_RULES = dict(
  seed=INT_AT_LEAST_0,
  batch_size=INT_AT_LEAST_1,
  eval_batch_size=INT_AT_LEAST_1,
  learning_rate=Rule("float", low=0, low_open=True),
  warmup_steps=INT_AT_LEAST_0,
  num_train_steps=INT_AT_LEAST_1,
  lr_decay_steps=Rule("int", low=0, note="0: num_train_steps"),
  lr_anneal_from_step=Rule("int", low=0, note="0: off"),
  train_budget_seconds=Rule("float", low=0, note="0: no budget"),
  train_budget_clock=Rule("str", choices=("wall", "unstolen")),
  grad_clip=Rule("float", low=0, note="0: no clipping"),
  grad_clip_ratio=Rule("float", low=0, note="0: off, else > 1"),
  grad_clip_ratio_decay=Rule("float", low=0, high=1, high_open=True),
  weight_decay=NUMBER_AT_LEAST_0,
  pretrain_steps=INT_AT_LEAST_0,
  jac_reg=NUMBER_AT_LEAST_0,
  jac_reg_from_step=Rule("int", low=0, note="0: from the first DEQ step"),
  jac_reg_until_step=Rule("int", low=0, note="0: jac_reg throughout"),
  jac_reg_after=NUMBER_AT_LEAST_0,
  jac_reg_prob=Rule("float", low=0, high=1, low_open=True),
  correction_weight=Rule("float", low=0, note="0: off; needs model.correction_steps"),
  correction_until_step=Rule("int", low=0, note="0: the correction throughout"),
  train_max_iter_delta=Rule("int", low=0, note="0: the model's max_iter every step"),
  eval_max_iter=Rule("int", low=0, note="0: the model's max_iter"),
  test_params=Rule("str", choices=("last", "best_valid")),
  ema_decay=Rule("float", low=0, high=1, high_open=True, note="0: off; evaluation reads the parameters' average"),
  ema_from_step=Rule("int", low=0, note="the average holds the parameters of this step and later"),
  warn_backward_failures=Rule("float", low=0, high=1, note="1: never warn"),
  warn_eval_failures=Rule("float", low=0, high=1, note="0: warn when any sample's solve failed; 1: never"),
  spectral_radius_every=Rule("int", low=0, note="0: never"),
  pretrain_jac_reg=NUMBER_AT_LEAST_0,
  pretrain_settle_iters=INT_AT_LEAST_0,
  pretrain_settle_from_step=INT_AT_LEAST_0,
  pretrain_settle_until_step=INT_AT_LEAST_0,
  dtype=Rule("str", choices=("float32", "bfloat16")),
  log_every_steps=INT_AT_LEAST_1,
  eval_every_steps=Rule("int", low=0, note="0: never"),
  checkpoint_every_steps=INT_AT_LEAST_1,
  keep_checkpoints=INT_AT_LEAST_1,
  max_nonfinite_steps=INT_AT_LEAST_1,
)
LM_RULES = dict(
  tgt_len=INT_AT_LEAST_1,
  eval_tgt_len=INT_AT_LEAST_1,
  eval_mem_len=Rule("int", low=-1, note="-1: the model's mem_len"),
  eval_max_segments=Rule("int", low=0, note="0: the whole split"),
)
WIKITEXT_DATA_RULES = {"data.name": Rule("str"), "data.manual_dir": Rule("str"), "data.data_dir": Rule("str")}
COPY_MEMORY_DATA_RULES = {
  "data.T": INT_AT_LEAST_1,
  "data.heldout_size": INT_AT_LEAST_1,
  "data.heldout_seed": INT_AT_LEAST_0,
  "data.valid_seed": Rule("int", low=-1, note="-1: validation reads the test's held-out set"),
}
# The fields that say what runs; the model's own fields are checked by its dataclass config.
RUN_RULES = {name: Rule("str") for name in ("model_name", "execution", "task", "study", "row")}


def rules(task: str) -> dict[str, Rule]:
  """Every field of a config of task `task` ("wikitext", "copy_memory"), by dotted path, except `model.*`."""
  if task == "wikitext":
    return {**RUN_RULES, **COMMON_RULES, **LM_RULES, **WIKITEXT_DATA_RULES}
  return {**RUN_RULES, **COMMON_RULES, **COPY_MEMORY_DATA_RULES}


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
  """Adds the copy-memory task's fields (`COMMON` and `data.{T, heldout_size, heldout_seed, valid_seed}`);
  docs/training.md."""
  config.task = "copy_memory"
  config.data = ml_collections.ConfigDict(dict(T=400, heldout_size=1000, heldout_seed=1234, valid_seed=-1))
  return _add_fields(config, COMMON, values)


def _add_fields(config, fields: dict, values: dict) -> ml_collections.ConfigDict:
  from experiments.model_configs import complete_model_config  # imports JAX: only when a config is made

  config.update(fields)
  complete_model_config(config)
  return update_known(config, values, fields)


def update_known(config: ml_collections.ConfigDict, values: dict, known) -> ml_collections.ConfigDict:
  """`config` updated with `values`; a name outside `known` is a ValueError listing the known names."""
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"Unknown training field(s) {unknown}; known: {sorted(known)}.")
  config.update(values)
  return config

"""One check of a whole config before anything is read or compiled: every field's kind and range, the
model's own fields, and the rules that tie fields together. Errors name each field by its path."""

from __future__ import annotations

import re

import ml_collections

from experiments.configs.fields import rules
from experiments.model_configs import EXECUTIONS, LAYER_MODELS, MODELS, architecture
from experiments.tasks import TASKS

OPTIONAL = ("study", "row")  # labels for tables and workdirs; configs made in code may leave them out
MAX_LINES = 12  # an error stays on one screen


class ConfigError(ValueError):
  """A config that cannot run; the message lists each bad field as `config.<path>=<value>: <what it allows>`."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every field that is missing, unknown, of the wrong kind or out of range."""
  problems = _field_problems(config)
  named = ("config.task", "config.model_name", "config.execution", "config.model ")
  if not any(p.startswith(named) for p in problems):
    problems += _model_problems(config)
  if not problems:
    problems = _cross_field_problems(config)
  if problems:
    raise ConfigError(_message(problems))


def _message(problems: list[str]) -> str:
  if len(problems) == 1:
    return problems[0]
  shown = problems[:MAX_LINES]
  more = [f"... and {len(problems) - MAX_LINES} more"] if len(problems) > MAX_LINES else []
  return f"{len(problems)} config fields cannot run:\n" + "\n".join(f"  {p}" for p in shown + more)


def _get(config, path: str):
  node = config
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      return _MISSING
    node = node[key]
  return node


_MISSING = object()


def _field_problems(config) -> list[str]:
  task = config.get("task", None)
  if task not in TASKS:
    return [f"config.task={task!r}: must be one of {sorted(TASKS)}"]
  expected = rules(task)
  problems = []
  for path, rule in expected.items():
    value = _get(config, path)
    if value is _MISSING:
      if path not in OPTIONAL:
        problems.append(f"config.{path} is missing: the {task} task needs it ({rule.allowed()})")
    elif not rule.accepts(value):
      problems.append(f"config.{path}={value!r}: must be {rule.allowed()}")
  known_top = {path.split(".")[0] for path in expected} | {"model"}
  problems += [f"config.{key}: no such field (a typo?)" for key in sorted(set(config.keys()) - known_top)]
  data = config.get("data", None)
  if isinstance(data, ml_collections.ConfigDict):
    known_data = {path.split(".", 1)[1] for path in expected if path.startswith("data.")}
    problems += [f"config.data.{key}: no such field (a typo?)" for key in sorted(set(data.keys()) - known_data)]
  if not isinstance(config.get("model", None), ml_collections.ConfigDict):
    problems.append("config.model is missing: the model's fields go there")
  return problems


def _model_problems(config) -> list[str]:
  if config.model_name not in MODELS:
    return [f"config.model_name={config.model_name!r}: must be one of {sorted(MODELS)}"]
  if config.execution not in EXECUTIONS:
    return [f"config.execution={config.execution!r}: must be one of {list(EXECUTIONS)}"]
  if (config.execution == "layers") != (config.model_name in LAYER_MODELS):
    fitting = "'layers'" if config.model_name in LAYER_MODELS else "'deq' or 'unrolled'"
    execution, name = config.execution, config.model_name
    return [f"config.execution={execution!r} does not fit config.model_name={name!r}: use {fitting}"]
  try:
    architecture(config)
  except (ValueError, TypeError) as error:
    message = str(error)
    match = re.match(r"(?:Unknown )?(\w+)", message)
    if match and match.group(1) in config.model:
      return [f"config.model.{match.group(1)}: {message}"]
    return [f"config.model ({config.model_name}): {message}"]
  return []


def _cross_field_problems(config) -> list[str]:
  problems = []
  model_max_iter = getattr(architecture(config), "max_iter", None)
  for name in ("train_max_iter_delta", "eval_max_iter", "spectral_radius_every"):
    value = config.get(name, 0)
    if value and (model_max_iter is None or config.execution != "deq"):
      problems.append(
        f"config.{name}={value}: a DEQ solver setting, and config.model_name={config.model_name!r} with"
        f" config.execution={config.execution!r} solves no equilibrium; leave it 0"
      )
  steps = tuple(getattr(architecture(config), "correction_steps", ()))
  weight = config.get("correction_weight", 0.0)
  if bool(steps) != (weight > 0):
    problems.append(
      f"config.correction_weight={weight} with config.model.correction_steps={steps}: the fixed-point correction"
      " needs both (the kept iterates and the weight of their loss), or neither"
    )
  until = config.get("correction_until_step", 0)
  if until and not steps:
    problems.append(
      f"config.correction_until_step={until} with config.model.correction_steps={steps}: it ends a fixed-point"
      " correction the model does not have; leave it 0"
    )
  delta = config.get("train_max_iter_delta", 0)
  if steps and delta and steps[-1] > model_max_iter - delta:
    problems.append(
      f"config.model.correction_steps={steps}: a training step's forward cap can be as low as max_iter -"
      f" train_max_iter_delta = {model_max_iter - delta}; keep the correction steps within it"
    )
  if delta and model_max_iter is not None and config.execution == "deq" and delta >= model_max_iter:
    problems.append(
      f"config.train_max_iter_delta={delta}: must be below config.model.max_iter={model_max_iter} (the forward cap"
      " of a training step is max_iter minus a draw from 0..train_max_iter_delta, and must stay >= 1)"
    )
  start, until = config.get("jac_reg_from_step", 0), config.jac_reg_until_step
  if start and until and start >= until:
    problems.append(
      f"config.jac_reg_from_step={start} with config.jac_reg_until_step={until}: jac_reg would weigh no step"
      " (from_step must come before until_step)"
    )
  anneal = config.get("lr_anneal_from_step", 0)
  if anneal and anneal >= config.num_train_steps:
    problems.append(
      f"config.lr_anneal_from_step={anneal} with config.num_train_steps={config.num_train_steps}: the linear"
      " anneal to 0 at num_train_steps must start before it (0: off)"
    )
  if config.task == "copy_memory":
    valid_seed, heldout_seed = config.data.valid_seed, config.data.heldout_seed
    if valid_seed == heldout_seed:
      problems.append(
        f"config.data.valid_seed={valid_seed} equals config.data.heldout_seed={heldout_seed}: a separate validation"
        " set needs its own seed (-1: validation reads the test's held-out set)"
      )
    elif valid_seed < 0 and config.test_params == "best_valid":
      problems.append(
        f"config.test_params='best_valid' with config.data.valid_seed={valid_seed}: validation would read the test's"
        f" held-out set (data.heldout_seed={heldout_seed}), and parameters chosen on it would bias the test loss;"
        " set data.valid_seed to another seed"
      )
  ratio = config.grad_clip_ratio
  if 0 < ratio <= 1:
    problems.append(
      f"config.grad_clip_ratio={ratio}: must be 0 (off) or > 1 (a multiple of the running norm); got"
      f" grad_clip_ratio={ratio}, grad_clip_ratio_decay={config.grad_clip_ratio_decay}"
    )
  if config.ema_decay > 0 and config.ema_from_step >= config.num_train_steps:
    problems.append(
      f"config.ema_from_step={config.ema_from_step} with config.num_train_steps={config.num_train_steps}: the"
      " parameters' average would hold no update of the run; start it before the last step"
    )
  return problems

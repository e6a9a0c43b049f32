"""Checkpoints: parameters, optimizer state and memory (orbax), and the loop's counters and config as JSON.

Resuming reads the newest checkpoint that restores; one that does not (a truncated file, a missing
part, garbage metadata) is moved aside with one line saying why, never deleted, and the one
before it is read. A checkpoint made with settings that shape the model or the training state
(architecture, batch size, memory length, dtype) is refused with the differing fields listed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import shutil
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict

from deqjax.nn.deq_layer import DEQSettings
from experiments.model_configs import MODELS, all_model_fields
from experiments.trainer.runtime import Runtime
from experiments.trainer.schedules import dropout_base_key

INVALID_DIR = "invalid_checkpoints"  # beside checkpoints/: unreadable checkpoints, moved aside


class ResumeMismatch(ValueError):
  """The checkpoint belongs to another run (seed, data, or settings that shape the state)."""


# Fields of config.model that may differ on resume: how the equilibrium is solved and differentiated
# (the weights and the training state do not depend on them), and dropout rates.
SOLVER_FIELDS = frozenset(f.name for f in dataclasses.fields(DEQSettings)) - {"pretrain_depth", "feed_fz"}
# Model fields that change how the same function is computed (memory for time), not what it is.
COMPUTATION_FIELDS = frozenset({"remat_attention", "attention_chunks"})
# Top-level fields that shape the training state (memory rows, parameter and optimizer dtypes).
TRAINING_STATE_FIELDS = ("batch_size", "dtype")


def checkpoint_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  """The manager of `<workdir>/checkpoints`, keeping the newest `keep` (>= 1) checkpoints."""
  if keep < 1:
    raise ValueError(f"keep_checkpoints must be >= 1 (the newest checkpoint is the run); got {keep}.")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


@dataclasses.dataclass
class Progress:
  """The loop's counters, saved with every checkpoint."""

  step: int = 0
  nonfinite_total: int = 0
  train_seconds: float = 0.0  # wall-clock time of the training steps, summed over resumed runs
  # The same less the share the hypervisor stole (experiments.trainer.host_cpu); equal to train_seconds
  # where that cannot be read, and in checkpoints written before it was measured.
  unstolen_seconds: float | None = None
  # test_params="best_valid": the step whose parameters scored best on validation so far, and that score
  # (the task's `selection_name`); the checkpoint then holds those parameters too. None: none kept.
  best_step: int | None = None
  best_valid: float | None = None

  def __post_init__(self):
    if self.unstolen_seconds is None:
      self.unstolen_seconds = self.train_seconds


def platform() -> dict:
  """What a run's numbers depend on besides its config and data: XLA computes the same program with other
  rounding on another backend, jax version or device count and, on the CPU, with another number of usable
  cores (its thread pool partitions work by it: the default config shortened to 100 steps ends at
  test_ppl 674.8288267225913 on two cores and 674.8287795067891 pinned to one)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "cpu_cores": cores,
  }


class Restored(NamedTuple):
  """A checkpoint's contents; `best_params` are those of `progress.best_step` (None when it kept none)."""

  progress: Progress
  params: Any
  opt_state: Any
  memory: Any
  best_params: Any = None


def save_checkpoint(manager, rt: Runtime, progress: Progress, params, opt_state, memory, best_params=None) -> None:
  """Parameters, optimizer state, memory, and as JSON: step, data position, RNG, the task's data identity.

  `best_params` (the parameters of `progress.best_step`) are stored beside the parameters when given.
  """
  if (best_params is None) != (progress.best_step is None):
    raise ValueError(
      f"best_params {'missing' if best_params is None else 'given'} with progress.best_step={progress.best_step}:"
      " the kept parameters and their step go together."
    )
  leaves = jax.tree.leaves(memory)
  meta = {
    **dataclasses.asdict(progress),
    "data_segment": progress.step,  # the next training batch; the data is a function of it
    "rng_key_data": np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist(),
    "task": rt.task.identity(),
    "memory": [[list(leaf.shape), str(leaf.dtype)] for leaf in leaves],
    "config": rt.config.to_dict(),
    "platform": platform(),
  }
  # Empty leaves (a memory of length 0) cannot be stored by orbax; their shapes in `meta` rebuild them.
  state = {"params": params, "opt_state": opt_state, "memory": [leaf for leaf in leaves if leaf.size]}
  if best_params is not None:
    state["best_params"] = best_params
  manager.save(progress.step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def restore_checkpoint(
  manager, rt: Runtime, params, opt_state, memory, step: int | None = None, training=True
) -> Restored:
  """The latest (or given) checkpoint's contents (`Restored`).

  `training` False (evaluation): the batch size, memory length and dtype may differ from the run's.
  Raises ResumeMismatch for another run's checkpoint; other errors mean the checkpoint is unreadable.
  """
  step = manager.latest_step() if step is None else step
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  where = f"The checkpoint at step {step} ({manager.directory / str(step)})"
  try:
    rt.task.check_identity(meta["task"], step)
  except ValueError as error:
    raise ResumeMismatch(str(error)) from None
  key_data = np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist()
  if meta["rng_key_data"] != key_data:
    raise ResumeMismatch(
      f"{where} was trained with another seed (its dropout key data {meta['rng_key_data']},"
      f" now {key_data} from seed={rt.config.seed}); resuming would not continue the same run. Use its seed."
    )
  if "config" in meta:  # checkpoints written before the config was saved skip this check
    differences = _differences(meta["config"], rt.config.to_dict())
    differing = [d for d in differences if _refused(*d, training)]
    if differing:
      allowed = "" if not training else " (--mode=eval may change batch_size, model.mem_len and dtype)"
      raise ResumeMismatch(
        f"{where} was made with other settings that shape the model or its training state{allowed}:\n"
        + "\n".join(f"  config.{path}: {there!r} in the checkpoint, {now!r} now" for path, there, now in differing)
        + "\nUse the checkpoint's values, or another --workdir."
      )
    changed = [f"{p} {a!r} -> {b!r}" for p, a, b in differences]  # all allowed: the refused ones raised above
    if changed and training:
      print(f"Resuming with changed settings: {', '.join(changed)}.", flush=True)
  then, now = meta.get("platform"), platform()  # checkpoints written before it was recorded have none
  if training and then is not None and then != now:
    changed = [f"{key} {then.get(key)!r} -> {value!r}" for key, value in now.items() if then.get(key) != value]
    print(
      f"Resuming on another platform ({', '.join(changed)}): the run continues, but its numbers may differ in"
      " the last bits from those of an uninterrupted run (XLA may round differently there).",
      flush=True,
    )
  # Parameters and optimizer state are replicated over the mesh, whatever sharding orbax would pick.
  as_target = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rt.replicated), tree)
  shapes = [(tuple(shape), jnp.dtype(dtype)) for shape, dtype in meta["memory"]]
  memory_target = [jax.ShapeDtypeStruct(*sd, sharding=rt.batch_sharding) for sd in shapes if math.prod(sd[0])]
  target = {"params": as_target(params), "opt_state": as_target(opt_state), "memory": memory_target}
  if meta.get("best_step") is not None:
    target["best_params"] = as_target(params)
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  stored = iter(state["memory"])
  leaves = [
    next(stored) if math.prod(shape) else jnp.zeros(shape, dtype, device=rt.batch_sharding) for shape, dtype in shapes
  ]
  memory = jax.tree.unflatten(jax.tree.structure(memory), leaves)
  progress = Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress) if f.name in meta})
  return Restored(progress, state["params"], state["opt_state"], memory, state.get("best_params"))


def restore_newest_valid(manager, rt: Runtime, params, opt_state, memory, training=True):
  """`restore_checkpoint` of the newest checkpoint that restores, or None if there is none.

  An unreadable checkpoint is reported in one line and, when `training`, moved to
  `<workdir>/invalid_checkpoints/` (so that retention never counts it and it is never overwritten).
  """
  for step in sorted(manager.all_steps(), reverse=True):
    with _quiet_abandoned_reads():
      try:
        return restore_checkpoint(manager, rt, params, opt_state, memory, step, training)
      except ResumeMismatch:
        raise
      except Exception as error:  # noqa: BLE001 - any failure to read it makes the checkpoint unusable
        reason = " ".join(f"{type(error).__name__}: {error}".split()).split(" See full TensorStore details")[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
    source = os.path.join(str(manager.directory), str(step))
    if training:
      target = _free_path(os.path.join(os.path.dirname(str(manager.directory)), INVALID_DIR, str(step)))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(source, target)
      manager.reload()
      print(f"Skipped the checkpoint at step {step}: it cannot be read ({reason}); moved it to {target}.", flush=True)
    else:
      print(f"Skipped the checkpoint at step {step} ({source}): it cannot be read ({reason}).", flush=True)
  return None


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Silences what orbax's abandoned reads print when collected.

  A failed restore leaves orbax's other concurrent array reads as coroutines that raise when
  Python collects them, each printed as "Exception ignored in ..." with a full TensorStore spec
  (hundreds of lines for one bad file). They repeat the error already reported in one line.
  """
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous


def _free_path(path: str) -> str:
  candidate, n = path, 1
  while os.path.exists(candidate):
    candidate, n = f"{path}.{n}", n + 1
  return candidate


def _differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
  """(dotted path, saved value, current value) of each config field that differs (tuples read as JSON lists)."""
  flat = lambda tree: {k: list(v) if isinstance(v, tuple) else v for k, v in flatten_dict(tree, sep=".").items()}
  a, b = flat(_with_model_defaults(saved)), flat(_with_model_defaults(now))
  pairs = [(p, a.get(p, "(absent)"), b.get(p, "(absent)")) for p in sorted(set(a) | set(b))]
  return [(p, there, now) for p, there, now in pairs if there != now]


def _with_model_defaults(config: dict) -> dict:
  """A config dict whose model fields include the defaults it leaves out: a checkpoint written before
  configs listed every model field reads as the same model."""
  if config.get("model_name") not in MODELS or not isinstance(config.get("model"), dict):
    return config
  return {**config, "model": all_model_fields(config["model_name"], config["model"])}


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and value > 0


def _is_setting(path: str) -> bool:
  """Whether a field may change on resume without the checkpoint's state ceasing to fit."""
  if path in ("model_name", "execution", *TRAINING_STATE_FIELDS):
    return False
  if path.startswith("model."):
    name = path.split(".", 1)[1]
    return name in SOLVER_FIELDS or name in COMPUTATION_FIELDS or name.startswith("dropout")
  return True


def state_mismatches(saved: dict, now: dict, training: bool) -> list[tuple[str, object, object]]:
  """(config path, checkpoint's value, current value) of each field whose change the checkpoint cannot follow.

  Training: the architecture (model_name, execution, every model field but the solver's settings
  and dropout), batch_size, dtype, and whether grad_clip_ratio is on (it adds optimizer state).
  Evaluation: the architecture only, less model.mem_len (evaluation has eval_mem_len). Both: whether
  ema_decay is on (it adds optimizer state, and evaluation reads the average it keeps).
  """
  return [d for d in _differences(saved, now) if _refused(*d, training)]


def _refused(path: str, there, now, training: bool) -> bool:
  if path == "grad_clip_ratio":  # switching it on or off adds or removes optimizer state
    return training and _positive(there) != _positive(now)
  if path == "ema_decay":  # the same, and evaluation would test other parameters than the run's
    return _positive(there) != _positive(now)
  if _is_setting(path):
    return False
  return training or not (path in TRAINING_STATE_FIELDS or path == "model.mem_len")

"""Checkpoints: parameters, optimizer state and memory (orbax), and the loop's counters as JSON."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from experiments.trainer.runtime import Runtime
from experiments.trainer.schedules import dropout_base_key


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


@dataclasses.dataclass
class Progress:
  """The loop's counters, saved with every checkpoint."""

  step: int = 0
  nonfinite_total: int = 0
  train_seconds: float = 0.0  # wall-clock time of the training steps, summed over resumed runs


def save_checkpoint(manager, rt: Runtime, progress: Progress, params, opt_state, memory) -> None:
  """Parameters, optimizer state, memory, and as JSON: step, data position, RNG, the task's data identity."""
  leaves = jax.tree.leaves(memory)
  meta = {
    **dataclasses.asdict(progress),
    "data_segment": progress.step,  # the next training batch; the data is a function of it
    "rng_key_data": np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist(),
    "task": rt.task.identity(),
    "memory": [[list(leaf.shape), str(leaf.dtype)] for leaf in leaves],
  }
  # Empty leaves (a memory of length 0) cannot be stored by orbax; their shapes in `meta` rebuild them.
  state = {"params": params, "opt_state": opt_state, "memory": [leaf for leaf in leaves if leaf.size]}
  manager.save(progress.step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def restore_checkpoint(manager, rt: Runtime, params, opt_state, memory, step: int | None = None):
  """(progress, params, opt_state, memory) of the latest (or given) checkpoint."""
  step = manager.latest_step() if step is None else step
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  rt.task.check_identity(meta["task"], step)
  key_data = np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist()
  if meta["rng_key_data"] != key_data:
    raise ValueError(
      f"The checkpoint at step {step} was trained with another seed (its dropout key data {meta['rng_key_data']},"
      f" now {key_data} from seed={rt.config.seed}); resuming would not continue the same run. Use its seed."
    )
  as_target = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
  shapes = [(tuple(shape), jnp.dtype(dtype)) for shape, dtype in meta["memory"]]
  memory_target = [jax.ShapeDtypeStruct(*sd, sharding=rt.batch_sharding) for sd in shapes if math.prod(sd[0])]
  target = {"params": as_target(params), "opt_state": as_target(opt_state), "memory": memory_target}
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  stored = iter(state["memory"])
  leaves = [
    next(stored) if math.prod(shape) else jnp.zeros(shape, dtype, device=rt.batch_sharding) for shape, dtype in shapes
  ]
  memory = jax.tree.unflatten(jax.tree.structure(memory), leaves)
  progress = Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress)})
  return progress, state["params"], state["opt_state"], memory

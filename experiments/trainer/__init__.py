"""The training loop shared by every task and model: data-parallel steps, schedules, checkpoints, metrics.

config_check every field of a config checked before anything runs
runtime      the checked config, the task, the model split into graph and state, the mesh
schedules    optimizer, training phase and Jacobian-penalty weight per step
steps        the compiled training update and evaluation batch, the evaluation loop
checkpoints  orbax checkpoints with the loop's counters and the platform they were made on
workdir      one run per workdir (an exclusive lock)
loop         train_and_evaluate (resuming), evaluate (a trained workdir)
metrics      progress line, metrics.jsonl, TensorBoard
models       config -> model instance (names -> classes: experiments.model_configs)
clipping     gradient clipping relative to the running norm
averaging    the parameters' moving average (ema_decay), which evaluation reads
"""

from experiments.trainer.averaging import average_parameters, averaged_parameters
from experiments.trainer.checkpoints import (
  Progress,
  checkpoint_manager,
  platform,
  restore_checkpoint,
  restore_newest_valid,
  save_checkpoint,
)
from experiments.trainer.config_check import ConfigError, check_config
from experiments.trainer.loop import NonFiniteError, evaluate, restore_trained, train_and_evaluate
from experiments.trainer.runtime import (
  DTYPES,
  Runtime,
  build_runtime,
  check_batch,
  make_mesh,
  setup,
  to_global,
)
from experiments.trainer.schedules import final_phase, make_optimizer, phase_at, uses_correction, uses_jac_reg
from experiments.trainer.steps import eval_runtime, evaluate_task, init_memory, model_forward, train_step
from experiments.trainer.workdir import WorkdirBusy, exclusive

__all__ = [
  "DTYPES",
  "ConfigError",
  "NonFiniteError",
  "Progress",
  "Runtime",
  "average_parameters",
  "averaged_parameters",
  "build_runtime",
  "check_batch",
  "check_config",
  "checkpoint_manager",
  "eval_runtime",
  "evaluate",
  "evaluate_task",
  "final_phase",
  "init_memory",
  "make_mesh",
  "make_optimizer",
  "model_forward",
  "phase_at",
  "platform",
  "restore_checkpoint",
  "restore_newest_valid",
  "restore_trained",
  "save_checkpoint",
  "setup",
  "to_global",
  "train_and_evaluate",
  "train_step",
  "WorkdirBusy",
  "exclusive",
  "uses_correction",
  "uses_jac_reg",
]

"""The training loop shared by every task and model: data-parallel steps, schedules, checkpoints, metrics.

runtime      the checked config, the task, the model split into graph and state, the mesh
schedules    optimizer, training phase and Jacobian-penalty weight per step
steps        the compiled training update and evaluation batch, the evaluation loop
checkpoints  orbax checkpoints with the loop's counters
loop         train_and_evaluate (resuming), evaluate (a trained workdir)
metrics      progress line, metrics.jsonl, TensorBoard
models       config -> model (the one place that maps names to classes)
clipping     gradient clipping relative to the running norm
"""

from experiments.trainer.checkpoints import Progress, checkpoint_manager, restore_checkpoint, save_checkpoint
from experiments.trainer.loop import NonFiniteError, evaluate, restore_trained, train_and_evaluate
from experiments.trainer.runtime import (
  DTYPES,
  Runtime,
  build_runtime,
  check_batch,
  check_config,
  make_mesh,
  setup,
  to_global,
)
from experiments.trainer.schedules import final_phase, make_optimizer, phase_at, uses_jac_reg
from experiments.trainer.steps import eval_runtime, evaluate_task, init_memory, model_forward, train_step

__all__ = [
  "DTYPES",
  "NonFiniteError",
  "Progress",
  "Runtime",
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
  "restore_checkpoint",
  "restore_trained",
  "save_checkpoint",
  "setup",
  "to_global",
  "train_and_evaluate",
  "train_step",
  "uses_jac_reg",
]

"""Training tasks: WikiText language modelling and the copy-memory task (`base.Task`)."""

from __future__ import annotations

from experiments.tasks.base import EvalSet, Task, local_rows
from experiments.tasks.copy_memory import CopyMemoryTask
from experiments.tasks.wikitext import WikitextTask

TASKS = {"wikitext": WikitextTask, "copy_memory": CopyMemoryTask}


def task_class(config) -> type[Task]:
  """The class of `config.task`; its `create(config)` returns (task, config with data-derived fields resolved)."""
  if config.task not in TASKS:
    raise ValueError(f"Unknown config.task={config.task!r}; expected one of {sorted(TASKS)}.")
  return TASKS[config.task]


__all__ = ["TASKS", "CopyMemoryTask", "EvalSet", "Task", "WikitextTask", "local_rows", "task_class"]

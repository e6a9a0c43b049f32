"""One reader for every run: where a config row's workdir is, its config, and its metrics.

A row is named once: `experiments/configs/<study>/<row>.py` (its `config.study`, `config.row`),
trained into `<root>/<study>/<row>` (a seed other than the config's: `<row>_seed<N>`), listed in
the tables under that row.
"""

from __future__ import annotations

import importlib
import json
import os
import re


def load_config(study: str, row: str):
  """The ConfigDict of `experiments/configs/<study>/<row>.py`."""
  return importlib.import_module(f"experiments.configs.{study}.{row}").get_config()


def workdir(root: str, study: str, row: str, seed: int | None = None) -> str:
  """`<root>/<study>/<row>`, or `<root>/<study>/<row>_seed<seed>` for a run with another seed."""
  return os.path.join(root, study, row if seed is None else f"{row}_seed{seed}")


def seed_workdirs(root: str, study: str, row: str) -> list[tuple[int, str]]:
  """(seed, workdir) of the runs of `row` with another seed (`<root>/<study>/<row>_seed<N>`), by seed."""
  pattern = re.compile(re.escape(row) + r"_seed(\d+)")
  folder = os.path.join(root, study)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  seeds = sorted(int(m.group(1)) for name in names if (m := pattern.fullmatch(name)))
  return [(seed, workdir(root, study, row, seed)) for seed in seeds]


def run_label(name: str, seed: int | None) -> str:
  """A run's name in a table or a plot: the model's `name`, and the seed where it is not the config's."""
  return name if seed is None else f"{name}, seed {seed}"


def read_metrics(workdir: str, eval_key: str, test_key: str) -> dict | None:
  """A workdir's metrics.jsonl split into training records, evaluations (records with `eval_key`) and
  the last record with `test_key` (None if the run has not tested); None when there is no metrics file.

  Training records name their training phase under "phase" (logs written before the name
  changed say "mode"; they are read the same).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as lines:
    records = [json.loads(line) for line in lines]
  for record in records:
    if "mode" in record and "phase" not in record:
      record["phase"] = record.pop("mode")
  return {
    "train": [r for r in records if "loss" in r],
    "evals": [r for r in records if eval_key in r],
    "test": next((r for r in reversed(records) if test_key in r), None),
  }


def deq_convergence(records: list[dict]) -> dict:
  """Step-weighted rates over the DEQ-phase training records, the mean seconds per DEQ step, the last residuals.

  A DEQ step counts as converged when every sample's forward and backward solve converged (the
  `converged` metric, 1 or 0 per step); each record averages the steps since the one before, so it
  weighs by the steps it covers. Logs from before the metric existed give deq_steps 0.
  """
  weight = 0.0
  sums = {"converged": 0.0, "f_converged": 0.0, "b_converged": 0.0, "s_per_step": 0.0}
  previous = None
  for record in records:
    if record.get("phase") == "deq" and previous is not None and "converged" in record:
      steps = record["step"] - previous
      weight += steps
      for key in sums:
        sums[key] += steps * record[key]
    previous = record["step"]
  total = max(weight, 1.0)
  deq = [r for r in records if r.get("phase") == "deq" and "f_residual" in r]
  last = deq[-1] if deq else {}
  return {
    **{key: value / total for key, value in sums.items()},
    "deq_steps": int(weight),
    "f_residual": last.get("f_residual"),
    "b_residual": last.get("b_residual"),
  }

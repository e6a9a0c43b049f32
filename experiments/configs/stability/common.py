"""The stability rows: the README's main job (experiments/configs/default.py) with its levers set.

Each row is `python -m experiments.main --config=experiments/configs/stability/<row>.py
--workdir=results/stability/<row>`; `python -m experiments.analysis.stability_table` reads them.
"""

import ml_collections

from experiments.configs import default


def lever_row(row: str, model: dict | None = None, **training) -> ml_collections.ConfigDict:
  """The main job's config named `stability/<row>`, with training fields `training` and model fields `model`."""
  config = default.get_config()
  config.study, config.row = "stability", row
  unknown = sorted(set(training) - set(config.keys()))
  if unknown:
    raise ValueError(f"Unknown training field(s) {unknown} for stability row {row!r}.")
  config.update(training)
  for name, value in (model or {}).items():
    config.model[name] = value  # DEQSettings fields the main job leaves at their defaults are added
  return config

"""The stability rows: the README's main job (experiments/configs/default.py) as it was before its levers
(weight norm, caps 16), with the row's levers set; `spectral_cap24` is the main job as it is now.

Each row is `python -m experiments.main --config=experiments/configs/stability/<row>.py
--workdir=results/stability/<row>`; `python -m experiments.analysis.stability_table` reads them.
"""

import ml_collections

from experiments.configs import default
from experiments.configs.fields import update_known

# The main job as it was before issue 25 adopted its levers: the reference's weight norm, caps of 16.
BEFORE_LEVERS = dict(norm="weight", max_iter=16, backward_max_iter=16)


def lever_row(row: str, model: dict | None = None, **training) -> ml_collections.ConfigDict:
  """The main job before its levers (`BEFORE_LEVERS`) named `stability/<row>`, with training fields
  `training` and model fields `model`."""
  config = default.get_config()
  config.model.update(BEFORE_LEVERS)
  config.study, config.row = "stability", row
  update_known(config, training, config.keys())
  for name, value in (model or {}).items():
    config.model[name] = value  # DEQSettings fields the main job leaves at their defaults are added
  return config

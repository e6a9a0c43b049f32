"""Stability row `spectral_cap24`: `spectral` with forward and backward caps of 24 steps: the main job as adopted."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("spectral_cap24", model=dict(norm="spectral", max_iter=24, backward_max_iter=24))

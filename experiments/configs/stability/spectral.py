"""Stability row `spectral`: the main job with the cell's linear maps spectrally normalised (no penalty)."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("spectral", model=dict(norm="spectral"))

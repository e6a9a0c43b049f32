"""Stability row `spectral_fpc`: `spectral` plus the fixed-point correction at steps 3 and 6, weight 0.5."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("spectral_fpc", model=dict(norm="spectral", correction_steps=(3, 6)), correction_weight=0.5)

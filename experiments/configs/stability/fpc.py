"""Stability row `fpc`: the main job with the fixed-point correction at steps 3 and 6, weight 0.5 (no penalty)."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("fpc", model=dict(correction_steps=(3, 6)), correction_weight=0.5)

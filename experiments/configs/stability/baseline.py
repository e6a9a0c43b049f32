"""Stability row `baseline`: the README's main job before issue 25 (weight norm, caps 16, no lever)."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("baseline")

"""Stability row `baseline`: the README's main job as it is (no lever)."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("baseline")

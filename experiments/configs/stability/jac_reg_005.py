"""Stability row `jac_reg_005`: the main job with the Jacobian penalty at gamma = 0.05 on every DEQ step."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("jac_reg_005", jac_reg=0.05)

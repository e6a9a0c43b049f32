"""Stability row `jac_reg_01`: the main job with the Jacobian penalty at gamma = 0.1 on every DEQ step."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("jac_reg_01", jac_reg=0.1)

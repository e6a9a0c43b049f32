"""Stability row `jac_reg_01_fpc`: `jac_reg_01` plus the fixed-point correction at steps 3 and 6, weight 0.5."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("jac_reg_01_fpc", model=dict(correction_steps=(3, 6)), jac_reg=0.1, correction_weight=0.5)

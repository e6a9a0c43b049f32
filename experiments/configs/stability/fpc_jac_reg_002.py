"""Stability row `fpc_jac_reg_002`: `fpc` plus a light Jacobian penalty, gamma = 0.02 on every DEQ step."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("fpc_jac_reg_002", model=dict(correction_steps=(3, 6)), correction_weight=0.5, jac_reg=0.02)

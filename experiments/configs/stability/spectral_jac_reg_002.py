"""Stability row `spectral_jac_reg_002`: `spectral` plus the Jacobian penalty at gamma = 0.02 on every DEQ step."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("spectral_jac_reg_002", model=dict(norm="spectral"), jac_reg=0.02)

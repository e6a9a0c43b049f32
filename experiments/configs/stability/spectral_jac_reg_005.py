"""Stability row `spectral_jac_reg_005`: `spectral` plus the Jacobian penalty at gamma = 0.05 on every DEQ step."""

from experiments.configs.stability.common import lever_row


def get_config():
  return lever_row("spectral_jac_reg_005", model=dict(norm="spectral"), jac_reg=0.05)

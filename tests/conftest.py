"""Test configuration: float64 available, strict rank promotion, several CPU devices.

x64 is on for the whole suite, so every float32 test also checks that the
solvers keep float32 states in float32 when 64-bit mode is enabled.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

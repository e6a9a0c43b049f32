"""Where the tests find the repository, the shared reference data beside it, and their own data."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared")  # DEQ reference dumps and the real WikiText-2 files
TEST_DATA = os.path.join(REPO, "tests", "data")

# XLA flags of the tests and of the subprocesses they start (one device there; conftest.py says why).
# The collective timeout: with four host devices on two cores and the suite's two workers busy, a device's
# thread may wait long for the others to reach an all-reduce; 300 s (XLA's default is 40 s) lets it wait.
# The aborts once blamed on that wait (test_sigkill_and_resume_is_bitwise_identical, test_faults) were a
# deadlock of all-reduces inside solver loops, which no compiled step holds now (deqjax.nn.deq_layer.cell_output).
_WANTED_XLA_FLAGS = (
  "--xla_backend_optimization_level=0",
  "--xla_cpu_use_fusion_emitters=false",
  "--xla_cpu_collective_call_terminate_timeout_seconds=300",
)


def _xla_knows(flags) -> bool:
  """Whether this jaxlib's XLA starts with `flags` (an unknown flag aborts the process at backend start)."""
  env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
  probe = [sys.executable, "-c", "import jax; jax.devices()"]
  return subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0


def _accepted_xla_flags() -> str:
  """The wanted flags this jaxlib knows (jaxlib 0.11 dropped the fusion-emitter switch), probed once.

  The answer is passed on in the environment, so the pytest-xdist workers and the tests' subprocesses
  do not probe again. All flags are tried together first (one probe when all are known).
  """
  known = os.environ.get("DEQJAX_TESTS_XLA_FLAGS")
  if known is None:
    wanted = _WANTED_XLA_FLAGS
    known = " ".join(wanted if _xla_knows(wanted) else [flag for flag in wanted if _xla_knows([flag])])
    os.environ["DEQJAX_TESTS_XLA_FLAGS"] = known
  return known


SUBPROCESS_XLA_FLAGS = _accepted_xla_flags()

"""Where the tests find the repository, the shared reference data beside it, and their own data."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared")  # DEQ reference dumps and the real WikiText-2 files
TEST_DATA = os.path.join(REPO, "tests", "data")

# XLA flags of the tests and of the subprocesses they start (one device there; conftest.py says why).
# The collective timeout: with four host devices on two cores and the suite's two workers busy, a device's
# thread may wait long for the others to reach an all-reduce; 300 s (XLA's default is 40 s) lets it wait.
# The aborts once blamed on that wait (test_sigkill_and_resume_is_bitwise_identical, test_faults) were a
# deadlock of all-reduces inside solver loops, which no compiled step holds now (deqjax.nn.deq_layer.cell_output).
SUBPROCESS_XLA_FLAGS = (
  "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
  " --xla_cpu_collective_call_terminate_timeout_seconds=300"
)

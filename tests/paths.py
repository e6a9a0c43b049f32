"""Where the tests find the repository, the shared reference data beside it, and their own data."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared")  # DEQ reference dumps and the real WikiText-2 files
TEST_DATA = os.path.join(REPO, "tests", "data")

# XLA flags of the tests and of the subprocesses they start (one device there; conftest.py says why).
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

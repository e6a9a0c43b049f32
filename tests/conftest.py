"""Test configuration: float64 available, strict rank promotion, several CPU devices, one compilation cache.

x64 is on for the whole suite, so every float32 test also checks that the
solvers keep float32 states in float32 when 64-bit mode is enabled.

Compiled programs are cached on disk for the session (JAX's persistent compilation cache, in a
fresh folder the pytest-xdist workers and the training subprocesses share): the end-to-end tests
build the same tiny model's steps many times over, in this process and in subprocesses, and
compile each once. A cached program is the same program, so results are unchanged.

Expensive artefacts (the prepared tiny dataset, the shared training run) are made once per test
session, whichever worker asks first, in a folder all workers share (`shared_once`).
"""

import os
import shutil
import tempfile

from paths import SUBPROCESS_XLA_FLAGS

# XLA's backend optimisation level 0 and its older (non-"fusion emitter") CPU code generator
# (paths.SUBPROCESS_XLA_FLAGS, which the tests' subprocesses pass too): the tests compile hundreds
# of small programs and run each a few times, so compiling fast beats running fast. Measured on the
# tiny DEQ training step: 3.9 s to compile by default at level 0, 2.0 s with both flags, the same run time.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {SUBPROCESS_XLA_FLAGS}")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_MADE_HERE = []  # the session folders this process made (the xdist controller); workers inherit them
for _variable in ("JAX_COMPILATION_CACHE_DIR", "DEQJAX_TESTS_SHARED"):
  if _variable not in os.environ:
    os.environ[_variable] = tempfile.mkdtemp(prefix=f"deqjax-tests-{_variable.lower()}-")
    _MADE_HERE.append(os.environ[_variable])

import jax  # noqa: E402
import pytest  # noqa: E402
from shared import shared_once  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Full float32 products in every test, on every platform: the tests hold float32 results to float64
# references and closed forms, and JAX's default runs float32 products in TF32 on GPUs (bfloat16 passes
# on TPUs), ~1e-3 relative. On the CPU this changes nothing. (The solvers' own products are HIGHEST
# whatever the default: tests/core/test_driver.py checks that under a bfloat16 default.)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops JAX's in-memory compiled programs after each test module.

  Every program XLA:CPU compiles keeps its own memory mappings while it is cached. One process that
  ran the whole suite held ~65,000 of them by tests/library and was killed by a segmentation fault
  inside the compiler: mmap had failed at the kernel's limit (`vm.max_map_count`, 65,530 by default).
  Programs a later module needs again come back from the persistent compilation cache on disk.
  """
  yield
  jax.clear_caches()


@pytest.fixture(scope="session")
def tfds_dir():
  """Where the tiny runs' TFDS dataset is prepared, once per session (`tiny_training.tiny_config`)."""

  def prepare(folder):
    from tiny_training import tiny_config

    from experiments.tasks.wikitext import load_data

    load_data(tiny_config(folder))

  return shared_once("tfds", prepare)


def pytest_unconfigure(config):
  del config
  for folder in _MADE_HERE:
    shutil.rmtree(folder, ignore_errors=True)

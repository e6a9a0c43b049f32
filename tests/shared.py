"""Artefacts made once per test session and shared by the pytest-xdist workers (see conftest.py)."""

import fcntl
import os
import pathlib


def shared_once(name: str, make) -> pathlib.Path:
  """A folder of the session's shared directory that `make(folder)` fills exactly once across workers.

  The first caller makes it under an exclusive lock; the others wait for it, then read it.
  """
  folder = pathlib.Path(os.environ["DEQJAX_TESTS_SHARED"]) / name
  with open(f"{folder}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (folder / ".done").exists():
      folder.mkdir(parents=True, exist_ok=True)
      make(folder)
      (folder / ".done").touch()
  return folder

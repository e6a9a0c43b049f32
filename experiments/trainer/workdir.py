"""One run per workdir: an exclusive lock held for the whole run, released by the OS if the run dies."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = "lock"


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


@contextlib.contextmanager
def exclusive(workdir: str):
  """Holds `<workdir>/lock` for the block; raises WorkdirBusy naming the holder if another process has it.

  The lock is an flock(2) on the file, so the kernel drops it when its process ends, however it
  ends: the lock of a killed run is taken over by the next run (which says so), never left stale.
  The file records the holder (pid, host, start time, command) for the message a second run gets.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(
        f"--workdir={workdir} is in use by another run ({_describe(_read(fd))}). Wait for it to end, stop it,"
        " or use another --workdir."
      ) from None
    previous = _read(fd)
    if previous:
      print(f"Took over the lock of {workdir} from a run that ended without releasing it ({_describe(previous)}).")
    holder = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(sys.argv),
    }
    _write(fd, json.dumps(holder))
    try:
      yield
    finally:
      _write(fd, "")  # released cleanly: the next run has nothing to take over
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode("utf-8", errors="replace").strip()
  try:
    return json.loads(text) if text else {}
  except json.JSONDecodeError:
    return {"unreadable": text[:80]}


def _write(fd: int, text: str) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, text.encode("utf-8"))
  os.fsync(fd)


def _describe(holder: dict) -> str:
  if not holder:
    return "holder unknown"
  if "pid" not in holder:
    return f"lock file reads {holder.get('unreadable', '')!r}"
  return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"

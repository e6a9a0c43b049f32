"""CPU time the hypervisor stole from this machine, read from Linux's /proc/stat.

On a shared virtual machine the host may not run a vCPU that has work (the "steal" column of
/proc/stat); on 2026-12-03 this machine's host took 14-75 % of the CPU time in bursts. A wall-clock
budget then buys fewer steps on a busy day than on a quiet one. `StealMeter` measures the stolen
share of the time the CPUs wanted to run, so that a run can log it beside its timings and, with
`train_budget_clock="unstolen"`, spend its budget in the time the CPUs actually ran: wall time x
(1 - stolen share). Contention the hypervisor does not report as steal (memory bandwidth, caches)
still slows a run: the same copy-memory steps took 0.8 s with under 2 % stolen where they had
taken 0.42 s on a quieter day.
"""

from __future__ import annotations

import dataclasses

PROC_STAT = "/proc/stat"
# Columns of the aggregate "cpu" line (proc(5)): user nice system idle iowait irq softirq steal ...;
# guest and guest_nice are already counted in user and nice.
IDLE_COLUMNS, STEAL_COLUMN, COUNTED_COLUMNS = (3, 4), 7, 8


@dataclasses.dataclass(frozen=True)
class CpuTicks:
  """Clock ticks summed over all CPUs since boot."""

  busy: int  # running or wanting to run: every counted column but idle and iowait (steal included)
  stolen: int


def read_cpu_ticks(path: str = PROC_STAT) -> CpuTicks | None:
  """The aggregate line of `path` as CpuTicks, or None where it is absent or not in /proc/stat's format."""
  try:
    with open(path, encoding="ascii") as stat:
      fields = stat.readline().split()
  except OSError:
    return None
  if len(fields) < 1 + COUNTED_COLUMNS or fields[0] != "cpu":
    return None
  try:
    ticks = [int(value) for value in fields[1 : 1 + COUNTED_COLUMNS]]
  except ValueError:
    return None
  busy = sum(value for column, value in enumerate(ticks) if column not in IDLE_COLUMNS)
  return CpuTicks(busy=busy, stolen=ticks[STEAL_COLUMN])


class StealMeter:
  """The stolen share of the CPUs' busy time between successive `lap()` calls.

  Each lap returns stolen / busy ticks since the previous lap (0.0 when no tick passed), or None
  when the ticks cannot be read (not Linux). With nothing else running in the machine, the busy
  time is the run's own demand, so 1 - share is the fraction of it the host served.
  """

  def __init__(self, read=None):
    """read: () -> CpuTicks | None; by default `read_cpu_ticks` of /proc/stat."""
    self._read = read or (lambda: read_cpu_ticks())
    self._last = self._read()

  @property
  def available(self) -> bool:
    return self._last is not None

  def lap(self) -> float | None:
    now = self._read()
    last, self._last = self._last, now
    if now is None or last is None:
      return None
    busy, stolen = now.busy - last.busy, now.stolen - last.stolen
    if busy <= 0:
      return 0.0
    return min(max(stolen / busy, 0.0), 1.0)

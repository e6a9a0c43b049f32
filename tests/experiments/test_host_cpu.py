"""The hypervisor's stolen CPU time: /proc/stat parsing, the meter's shares, and the budget clock that uses them."""

import json

import orbax.checkpoint as ocp
from tiny_training import tiny_config

from experiments import trainer
from experiments.trainer import host_cpu
from experiments.trainer.checkpoints import Progress
from experiments.trainer.loop import over_budget


def test_cpu_ticks_are_read_from_the_aggregate_line(tmp_path):
  stat = tmp_path / "stat"
  # user nice system idle iowait irq softirq steal guest guest_nice
  stat.write_text("cpu  100 10 50 1000 20 5 7 30 3 0\ncpu0 50 5 25 500 10 2 3 15 1 0\nintr 1 2\n")
  assert host_cpu.read_cpu_ticks(str(stat)) == host_cpu.CpuTicks(busy=100 + 10 + 50 + 5 + 7 + 30, stolen=30)
  assert host_cpu.read_cpu_ticks(str(tmp_path / "absent")) is None
  stat.write_text("intr 1 2 3 4 5 6 7 8 9\n")
  assert host_cpu.read_cpu_ticks(str(stat)) is None
  stat.write_text("cpu  100 10 50 1000\n")  # too few columns to hold steal
  assert host_cpu.read_cpu_ticks(str(stat)) is None


def test_steal_meter_reports_the_stolen_share_of_busy_time_per_lap():
  readings = iter([host_cpu.CpuTicks(1000, 40), host_cpu.CpuTicks(1100, 65), host_cpu.CpuTicks(1100, 65)])
  meter = host_cpu.StealMeter(lambda: next(readings))
  assert meter.available
  assert meter.lap() == 0.25  # 25 of 100 busy ticks stolen
  assert meter.lap() == 0.0  # no tick passed
  unreadable = host_cpu.StealMeter(lambda: None)
  assert not unreadable.available and unreadable.lap() is None


def test_budget_clocks_count_wall_or_unstolen_time(tfds_dir):
  config = tiny_config(tfds_dir, train_budget_seconds=60.0)
  progress = Progress(step=5, train_seconds=100.0, unstolen_seconds=40.0)
  assert over_budget(config, progress)
  config.train_budget_clock = "unstolen"
  assert not over_budget(config, progress)
  assert over_budget(config, Progress(step=9, train_seconds=100.0, unstolen_seconds=60.0))
  assert Progress(train_seconds=7.0).unstolen_seconds == 7.0  # checkpoints from before it was measured


def test_a_fully_stolen_host_spends_no_unstolen_budget(tfds_dir, tmp_path, monkeypatch):
  # Every tick stolen: with the "unstolen" clock a 1-microsecond budget never runs out, so all 3 steps run
  # (the "wall" clock stops after the first: test_wall_clock_budget_stops_training_then_tests).
  ticks = iter(host_cpu.CpuTicks(busy=100 * i, stolen=100 * i) for i in range(1, 10_000))
  monkeypatch.setattr(host_cpu, "read_cpu_ticks", lambda path=host_cpu.PROC_STAT: next(ticks))
  config = tiny_config(
    tfds_dir, num_train_steps=3, pretrain_steps=0, train_budget_seconds=1e-6, train_budget_clock="unstolen",
    eval_every_steps=0, log_every_steps=2,
  )  # fmt: skip
  trainer.train_and_evaluate(config, str(tmp_path))
  assert ocp.CheckpointManager(str(tmp_path / "checkpoints")).latest_step() == 3
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [2, 3, 3]
  for record in records[:2]:
    assert record["host_steal"] == 1.0 and record["unstolen_seconds"] == 0.0 and record["train_seconds"] > 0

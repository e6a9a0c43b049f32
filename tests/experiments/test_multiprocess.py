"""Multi-process training: two processes under jax.distributed compute what one process on two devices does."""

import os
import socket
import subprocess

from paths import REPO, SUBPROCESS_XLA_FLAGS
from tiny_training import TINY, TINY_MODEL, main_command, tiny_text

# The smallest run that exercises both phases, the data sharding, the DEQ solves, the final
# checkpoint and the test evaluation: 1 pretraining step, 2 DEQ steps, 1 test segment.
SHORT = dict(num_train_steps=3, pretrain_steps=1, eval_max_segments=1, checkpoint_every_steps=100, eval_every_steps=0)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, tfds_dir, devices: int, *extra) -> subprocess.Popen:
  fields = {**TINY, **SHORT, **{f"model.{k}": v for k, v in TINY_MODEL.items()}}
  fields.update({"data.data_dir": tfds_dir, "data.manual_dir": tiny_text(tfds_dir)})
  command = main_command(workdir, fields, *extra)
  xla_flags = f"--xla_force_host_platform_device_count={devices} {SUBPROCESS_XLA_FLAGS}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  env.pop("JAX_ENABLE_X64", None)
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(run: subprocess.Popen) -> tuple[str, str]:
  out, _ = run.communicate(timeout=400)
  assert run.returncode == 0, out
  return out, out.strip().splitlines()[-1]


def test_two_processes_equal_one_process_on_two_devices(tfds_dir, tmp_path):
  # The batch is split over the two processes (each feeds its half to its one device) and the
  # gradients are all-reduced through the CPU collectives; one process with two local devices
  # splits the same batch the same way. The runs must agree to every digit of test_ppl.
  port = _free_port()
  single = _start(tmp_path / "single", tfds_dir, 2)
  distributed = [
    _start(
      tmp_path / "distributed",
      tfds_dir,
      1,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    )  # fmt: skip
    for i in (0, 1)
  ]
  _, single_line = _result(single)
  out0, line0 = _result(distributed[0])
  out1, _ = _result(distributed[1])
  assert single_line.startswith("test_ppl=") and float(single_line.split("=")[1]) > 1
  assert line0 == single_line, (line0, single_line)
  assert "test_ppl=" not in out1  # only process 0 reports
  # Process 0 alone writes the run's files; both took part in the one checkpoint.
  assert sorted(os.listdir(tmp_path / "distributed" / "checkpoints")) == ["3"]
  assert (tmp_path / "distributed" / "metrics.jsonl").exists()

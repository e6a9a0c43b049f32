"""Fault injection: invalid config fields, concurrent runs, corrupt checkpoints, resumes with other settings,
data that changed under a prepared dataset, SIGTERM in the final test. Each ends in the undisturbed
result or in a short error naming the field, file or checkpoint."""

import glob
import json
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from paths import REPO
from tiny_training import copy_workdir, tiny_config

from experiments import trainer
from experiments.trainer import checkpoints, loop
from experiments.trainer.metrics import MetricsWriter
from experiments.trainer.workdir import WorkdirBusy, exclusive


def _error_of(config) -> str:
  with pytest.raises(trainer.ConfigError) as caught:
    trainer.check_config(config)
  message = str(caught.value)
  assert len(message.splitlines()) <= 15, message
  return message


@pytest.mark.parametrize(
  "fields, named",
  [
    (dict(num_train_steps=-5), "config.num_train_steps=-5: must be an int >= 1"),
    (dict(learning_rate=-1e-3), "config.learning_rate=-0.001: must be a number > 0"),
    (dict(warmup_steps=-1), "config.warmup_steps=-1: must be an int >= 0"),
    (dict(grad_clip=-0.25), "config.grad_clip=-0.25: must be a number >= 0 (0: no clipping)"),
    (dict(checkpoint_every_steps=0), "config.checkpoint_every_steps=0: must be an int >= 1"),
    (dict(log_every_steps=0), "config.log_every_steps=0: must be an int >= 1"),
    (dict(eval_batch_size=0), "config.eval_batch_size=0: must be an int >= 1"),
    (dict(eval_tgt_len=0), "config.eval_tgt_len=0: must be an int >= 1"),
    (dict(keep_checkpoints=0), "config.keep_checkpoints=0: must be an int >= 1"),
    (dict(max_nonfinite_steps=0), "config.max_nonfinite_steps=0: must be an int >= 1"),
    (dict(dtype="float16"), "config.dtype='float16': must be one of ['float32', 'bfloat16']"),
    (dict(model=dict(max_iter=0)), "config.model.max_iter: max_iter must be an int >= 1; got max_iter=0."),
    (dict(model=dict(rtol=-1.0)), "config.model.rtol: rtol must be a finite number >= 0; got rtol=-1.0."),
    (dict(model=dict(n_head=0)), "config.model.n_head: n_head must be an int >= 1; got n_head=0."),
    (dict(model_name="deq_transformr"), "config.model_name='deq_transformr': must be one of"),
    (dict(execution="layers"), "config.execution='layers' does not fit config.model_name='deq_transformer'"),
  ],
)
def test_each_invalid_field_is_named_with_its_range(tmp_path, fields, named):
  # Checked before any data is read: the data folders named in the config are never created.
  config = tiny_config(tmp_path / "never_made", **fields)
  assert named in _error_of(config)
  with pytest.raises(trainer.ConfigError, match="config."):
    trainer.setup(config)
  with pytest.raises(trainer.ConfigError, match="config."):
    trainer.evaluate(config, str(tmp_path / "workdir"))
  assert not (tmp_path / "never_made").exists() and not (tmp_path / "workdir").exists()


def test_every_bad_field_is_listed_at_once_and_unknown_fields_are_refused(tmp_path):
  config = tiny_config(tmp_path, learning_rate=-1.0, log_every_steps=0, model=dict(max_iter=0))
  message = _error_of(config)
  assert message.splitlines()[0] == "3 config fields cannot run:"
  for named in ("config.learning_rate=-1.0", "config.log_every_steps=0", "config.model.max_iter"):
    assert named in message
  config = tiny_config(tmp_path)
  config.learning_rat = 0.1  # a config made in code, where ml_collections does not catch the typo
  config.data.manual_dri = "x"
  message = _error_of(config)
  assert "config.learning_rat: no such field" in message and "config.data.manual_dri: no such field" in message
  config = tiny_config(tmp_path, grad_clip_ratio=0.5)
  assert "config.grad_clip_ratio=0.5: must be 0 (off) or > 1" in _error_of(config)


def test_every_committed_config_passes_the_check():
  paths = [os.path.join(REPO, "experiments", "configs", "default.py")]
  found = glob.glob(os.path.join(REPO, "experiments", "configs", "*", "*.py"))
  paths += [p for p in found if not p.endswith(("common.py", "__init__.py"))]
  assert len(paths) >= 19
  for path in paths:
    trainer.check_config(runpy.run_path(path)["get_config"]())


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(tfds_dir, tmp_path, capsys):
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  assert holder.stdout.readline().strip() == "holding"
  config = tiny_config(tfds_dir)
  with pytest.raises(WorkdirBusy, match=rf"--workdir={tmp_path} is in use by another run \(pid {holder.pid} on "):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["lock"]  # refused before anything was written
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with exclusive(str(tmp_path)):
    assert f"Took over the lock of {tmp_path} from a run that ended without releasing it (pid {holder.pid}" in (
      capsys.readouterr().out
    )
    with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):  # held: even this process cannot enter twice
      with exclusive(str(tmp_path)):
        pass
  with exclusive(str(tmp_path)):  # released cleanly: nothing to take over
    assert "Took over" not in capsys.readouterr().out


_HOLD_LOCK = """
import sys, time
from experiments.trainer.workdir import exclusive
with exclusive(sys.argv[1]):
  print("holding", flush=True)
  time.sleep(120)
"""


def _truncate_largest_data_file(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True) if os.path.isfile(p)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


CORRUPTIONS = {
  "truncated data file": _truncate_largest_data_file,
  "state removed": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "state")),
  "garbage metadata": lambda step_dir: pathlib.Path(step_dir, "meta", "metadata").write_text("{garbage"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_is_skipped_and_moved_aside(trained, tmp_path, capsys, corruption):
  config, workdir, _, _ = trained
  workdir = copy_workdir(workdir, tmp_path)
  CORRUPTIONS[corruption](str(workdir / "checkpoints" / "50"))
  os.makedirs(workdir / "checkpoints" / "60.orbax-checkpoint-tmp-1")  # what a kill inside a write leaves
  rt, params = trainer.setup(config)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  manager = trainer.checkpoint_manager(str(workdir), config.keep_checkpoints)
  # Evaluation reads the previous checkpoint and moves nothing; training moves the bad one aside.
  progress, *_ = checkpoints.restore_newest_valid(manager, rt, params, opt_state, memory, training=False)
  assert progress.step == 25 and os.path.isdir(workdir / "checkpoints" / "50")
  progress, *_ = checkpoints.restore_newest_valid(manager, rt, params, opt_state, memory)
  assert progress.step == 25 and manager.all_steps() == [25]
  assert os.path.isdir(workdir / "invalid_checkpoints" / "50")
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Skipped")]
  assert len(lines) == 2 and all("Skipped the checkpoint at step 50" in line for line in lines)
  assert lines[1].endswith(f"moved it to {workdir / 'invalid_checkpoints' / '50'}.") and len(lines[1]) < 400


def test_training_resumes_past_a_corrupt_checkpoint_to_the_undisturbed_result(trained, tmp_path, capsys):
  config, workdir, test_ppl, _ = trained
  workdir = copy_workdir(workdir, tmp_path)
  _truncate_largest_data_file(str(workdir / "checkpoints" / "50"))
  assert trainer.train_and_evaluate(config, str(workdir))["test_ppl"] == test_ppl  # steps 26-50 again, bit for bit
  assert "Resumed from" in capsys.readouterr().out
  assert sorted(os.listdir(workdir / "checkpoints")) == ["25", "50"] and os.listdir(workdir / "invalid_checkpoints")
  steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  assert steps == sorted(steps) and steps.count(50) == 2  # the redone steps' records replace the first ones


def test_resuming_on_another_platform_says_so_and_continues(trained, tmp_path, capsys, monkeypatch):
  # XLA rounds differently with another core count, backend or version: a resume there is not bitwise.
  config, workdir, _, _ = trained
  workdir = copy_workdir(workdir, tmp_path)
  here = checkpoints.platform()
  assert here["cpu_cores"] >= 1 and here["backend"] == "cpu"
  rt, params = trainer.setup(config)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  manager = trainer.checkpoint_manager(str(workdir), config.keep_checkpoints)
  saved = manager.restore(50, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  assert saved["platform"] == here  # recorded with the checkpoint
  checkpoints.restore_newest_valid(manager, rt, params, opt_state, memory)
  assert "another platform" not in capsys.readouterr().out
  monkeypatch.setattr(checkpoints, "platform", lambda: {**here, "cpu_cores": here["cpu_cores"] + 1})
  progress, *_ = checkpoints.restore_newest_valid(manager, rt, params, opt_state, memory)
  out = capsys.readouterr().out
  assert progress.step == 50
  assert f"Resuming on another platform (cpu_cores {here['cpu_cores']} -> {here['cpu_cores'] + 1})" in out
  checkpoints.restore_newest_valid(manager, rt, params, opt_state, memory, training=False)  # evaluation: silent
  assert "another platform" not in capsys.readouterr().out


@pytest.mark.parametrize(
  "change, named",
  [
    (dict(model=dict(d_model=48)), "config.model.d_model: 32 in the checkpoint, 48 now"),
    (dict(model=dict(mem_len=8)), "config.model.mem_len: 16 in the checkpoint, 8 now"),
    (dict(batch_size=4), "config.batch_size: 8 in the checkpoint, 4 now"),
    (dict(dtype="bfloat16"), "config.dtype: 'float32' in the checkpoint, 'bfloat16' now"),
  ],
)
def test_resuming_with_settings_that_shape_the_state_is_refused(trained, tmp_path, change, named):
  config, workdir, _, _ = trained
  workdir = copy_workdir(workdir, tmp_path)
  changed = config.copy_and_resolve_references()
  model = change.pop("model", {})
  changed.update(change)
  changed.model.update(model)
  with pytest.raises(checkpoints.ResumeMismatch) as caught:
    trainer.train_and_evaluate(changed, str(workdir))
  message = str(caught.value)
  assert named in message and "The checkpoint at step 50" in message and len(message.splitlines()) <= 15
  if "d_model" in named:  # the architecture binds evaluation too; batch size, memory and dtype do not
    with pytest.raises(checkpoints.ResumeMismatch, match="config.model.d_model"):
      trainer.restore_trained(changed, str(workdir))
  else:
    _, _, phase = trainer.restore_trained(changed, str(workdir))
    assert phase == "deq"


def test_mismatches_follow_what_each_mode_may_change():
  saved = {"model_name": "m", "batch_size": 8, "dtype": "float32", "learning_rate": 1e-3, "grad_clip_ratio": 0.0}
  saved["model"] = {"d_model": 32, "mem_len": 16, "max_iter": 8, "dropout": 0.1, "feed_fz": True}
  now = json.loads(json.dumps(saved))
  now.update(learning_rate=5e-4, grad_clip_ratio=0.0)
  now["model"].update(max_iter=30, dropout=0.0, remat_attention=False)
  assert checkpoints.state_mismatches(saved, now, training=True) == []  # settings, not state
  now["model"]["feed_fz"] = False
  now["grad_clip_ratio"] = 2.0  # switched on: new optimizer state
  assert [p for p, *_ in checkpoints.state_mismatches(saved, now, training=True)] == [
    "grad_clip_ratio",
    "model.feed_fz",
  ]
  assert [p for p, *_ in checkpoints.state_mismatches(saved, now, training=False)] == ["model.feed_fz"]


def test_a_checkpoint_config_without_the_default_model_fields_reads_as_the_same_model():
  # Configs list every model field now; a checkpoint written before lists only those its config set.
  saved = {"model_name": "deq_transformer", "batch_size": 8, "dtype": "float32", "grad_clip_ratio": 0.0}
  saved["model"] = {"n_token": 50, "d_model": 32, "n_head": 2, "d_inner": 64}
  now = json.loads(json.dumps(saved))
  now["model"].update(norm="weight", d_head=None, correction_steps=[], tie_projs=None)  # the defaults, as JSON
  assert checkpoints.state_mismatches(saved, now, training=True) == []
  now["model"]["norm"] = "spectral"  # not the default: another model
  assert [p for p, *_ in checkpoints.state_mismatches(saved, now, training=True)] == ["model.norm"]


def test_evaluation_of_a_missing_workdir_creates_nothing(tfds_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints under --workdir=.*typo"):
    trainer.evaluate(tiny_config(tfds_dir), str(tmp_path / "typo"))
  assert not (tmp_path / "typo").exists()


def test_sigterm_in_the_final_test_stops_with_a_message(trained, tmp_path, monkeypatch, capsys):
  config, workdir, _, _ = trained
  workdir = copy_workdir(workdir, tmp_path)

  def terminated_evaluation(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this
    raise AssertionError("SIGTERM did not stop the final test")

  handler = signal.getsignal(signal.SIGTERM)
  with monkeypatch.context() as patch:
    patch.setattr(loop, "evaluate_task", terminated_evaluation)
    assert trainer.train_and_evaluate(config, str(workdir)) is None  # training was complete: straight to the test
  assert "SIGTERM during the final test: training is complete and saved at step 50" in capsys.readouterr().out
  assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone again


def test_a_run_without_memory_checkpoints_and_restores(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, model=dict(mem_len=0))
  rt, params = trainer.setup(config)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  assert all(leaf.size == 0 for leaf in jax.tree.leaves(memory))
  manager = trainer.checkpoint_manager(str(tmp_path), 1)
  trainer.save_checkpoint(manager, rt, trainer.Progress(step=3), params, opt_state, memory)
  progress, restored, _, restored_memory, _ = trainer.restore_checkpoint(manager, rt, params, opt_state, memory)
  assert progress.step == 3 and os.listdir(tmp_path / "checkpoints") == ["3"]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert [m.shape for m in jax.tree.leaves(restored_memory)] == [m.shape for m in jax.tree.leaves(memory)]


def test_metrics_of_steps_after_the_restored_checkpoint_are_dropped(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in (10, 20, 30, 40):
      f.write(json.dumps({"step": step, "loss": 1.0}) + "\n")
  MetricsWriter(str(tmp_path), 100, 1, start_step=20).close()
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [10, 20]

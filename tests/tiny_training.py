"""The tiny training setup shared by the end-to-end tests: the default config shrunk, on a short test text.

The training text is the bundled sample's (the WikiText-2 validation file, 13,777 types); the
text of its validation and test splits is the first TEST_LINES lines of the sample's test file
(~2,800 tokens, 22 evaluation segments), so that a run's final test reads seconds, not minutes.
"""

import dataclasses
import functools
import pathlib
import shutil
import sys

import jax
import numpy as np
import optax

from deqjax.data import OrderedLMStream
from experiments import trainer
from experiments.configs import default

TINY = dict(batch_size=8, tgt_len=16, eval_batch_size=4, eval_tgt_len=32, eval_max_segments=4)
# The reference's weight norm, as the tests of the training machinery were written for (the main job's
# spectral norm is tested in tests/library/test_spectral_norm.py and by the stability rows).
TINY_MODEL = dict(d_model=32, n_head=2, d_inner=64, mem_len=16, max_iter=8, backward_max_iter=8, norm="weight")
TEST_LINES = 60
# The run made once per session and shared by the tests that inspect it (tests/experiments/conftest.py).
SHARED_RUN = dict(
  num_train_steps=50, pretrain_steps=20, log_every_steps=10, eval_every_steps=0,
  jac_reg=0.5, jac_reg_until_step=40, jac_reg_after=0.0, checkpoint_every_steps=25,
)  # fmt: skip


def tiny_text(tfds_dir) -> str:
  """The tiny runs' text folder, beside `tfds_dir` (made once): the sample's training file, a short test file."""
  folder = pathlib.Path(str(tfds_dir) + "_text")
  if not (folder / "wiki.test.tokens").exists():
    folder.mkdir(parents=True, exist_ok=True)
    sample = pathlib.Path(default.SAMPLE_DIR)
    shutil.copy(sample / "wiki.valid.tokens", folder / "wiki.valid.tokens")
    lines = (sample / "wiki.test.tokens").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "wiki.test.tokens").write_text("".join(lines[:TEST_LINES]), encoding="utf-8")
  return str(folder)


def tiny_config(tfds_dir, model=None, **overrides):
  """The default config shrunk, prepared into `tfds_dir`, with top-level `overrides` and `model` field overrides.

  Its text is `tiny_text`'s unless `overrides` sets `data`.
  """
  config = default.get_config()
  config.update({**TINY, **overrides})
  config.model.update({**TINY_MODEL, **(model or {})})
  config.data.data_dir = str(tfds_dir)
  if "data" not in overrides:
    config.data.manual_dir = tiny_text(tfds_dir)
  return config


def main_command(workdir, fields: dict, *extra: str) -> list[str]:
  """`python -m experiments.main` on the default config with `--config.<field>=<value>` for `fields`, then `extra`."""
  command = [sys.executable, "-m", "experiments.main", f"--config={default.__file__}", f"--workdir={workdir}"]
  return command + [f"--config.{k}={v}" for k, v in fields.items()] + list(extra)


def copy_workdir(workdir, tmp_path) -> pathlib.Path:
  """A private copy of a (shared) run's workdir under `tmp_path`, for tests that resume, lock or damage it."""
  target = pathlib.Path(tmp_path) / "workdir"
  shutil.copytree(workdir, target, ignore=shutil.ignore_patterns("lock"))
  return target


# ---------------------------------------------------------------------------------------------
# One training update, compared (the tests of what a training field does to the update)


def one_update(tfds_dir, step, phase="deq", model=None, max_iter=None, use_radius=False, **fields):
  """(the negated gradient of training step `step` in phase `phase`, per parameter; its metrics), for the
  tiny config with `fields` (and `model` fields).

  The update is computed by `train_step` with plain SGD at rate 1 in place of the config's AdamW:
  Adam's first update is about lr * sign(gradient), so a rounding-level change of a near-zero
  gradient entry would move it by up to 2 lr; the gradient itself changes only at rounding level
  when the loss is the same function, and by orders of magnitude more when it is not.
  """
  config = tiny_config(tfds_dir, pretrain_steps=0, warmup_steps=0, **fields)
  config.model.update(model or {})
  rt, params = trainer.setup(config)
  rt = dataclasses.replace(rt, optimizer=optax.sgd(1.0))
  before = jax.tree.leaves(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  x, y = (jax.device_put(a, rt.batch_sharding) for a in OrderedLMStream(rt.task.data.splits["train"], 8, 16).segment(0))
  use_jac, use_correction = trainer.uses_jac_reg(config, phase, step), trainer.uses_correction(config, phase, step)
  update = functools.partial(
    trainer.train_step, rt, phase, use_jac=use_jac, max_iter=max_iter, use_radius=use_radius,
    use_correction=use_correction,
  )  # fmt: skip
  new_params, _, _, metrics = jax.jit(update)(params, rt.optimizer.init(params), memory, x, y, step)
  updates = [np.asarray(a) - np.asarray(b) for a, b in zip(jax.tree.leaves(new_params), before, strict=True)]
  return updates, metrics


def max_difference(a, b) -> float:
  """max |a - b| over all parameters, relative to max |b| (two programs computing the same float32 gradient: ~2e-7)."""
  scale = max(float(np.max(np.abs(v))) for v in b)
  return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True)) / scale


# Two updates are the same (the same loss function, computed by possibly different programs) below
# SAME, and differ (a change of the loss function) above DIFFERENT; nothing may fall in between.
SAME, DIFFERENT = 1e-5, 1e-2


@functools.cache
def plain_update(tfds_dir, phase):
  """The tiny config's own first update in phase `phase`, computed once per test process."""
  return one_update(tfds_dir, 0, phase)


def changes_update(tfds_dir, phase, model=None, **fields) -> bool:
  """Whether `fields` (and `model` fields) change the first update of phase `phase` (the tiny config's)."""
  plain, _ = plain_update(tfds_dir, phase)
  changed, _ = one_update(tfds_dir, 0, phase, model, **fields)
  difference = max_difference(changed, plain)
  assert difference < SAME or difference > DIFFERENT, difference  # the same function, or clearly not
  return difference > DIFFERENT

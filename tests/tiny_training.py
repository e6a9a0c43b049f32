"""The tiny training setup shared by the end-to-end tests: the default config shrunk, on a short test text.

The training text is the bundled sample's (the WikiText-2 validation file, 13,777 types); the
text of its validation and test splits is the first TEST_LINES lines of the sample's test file
(~2,800 tokens, 22 evaluation segments), so that a run's final test reads seconds, not minutes.
"""

import pathlib
import shutil
import sys

from experiments.configs import default

TINY = dict(batch_size=8, tgt_len=16, eval_batch_size=4, eval_tgt_len=32, eval_max_segments=4)
TINY_MODEL = dict(d_model=32, n_head=2, d_inner=64, mem_len=16, max_iter=8, backward_max_iter=8)
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

"""The training run the end-to-end tests share (made once per session, whichever xdist worker asks first)."""

import contextlib
import io
import json

import pytest
from shared import shared_once
from tiny_training import SHARED_RUN, tiny_config

from experiments import trainer


@pytest.fixture(scope="session")
def trained(tfds_dir):
  """(config, workdir, test_ppl, printed output) of the shared run."""
  config = tiny_config(tfds_dir, **SHARED_RUN)

  def train(workdir):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      results = trainer.train_and_evaluate(config, str(workdir))
    (workdir / "printed.txt").write_text(printed.getvalue(), encoding="utf-8")
    (workdir / "results.json").write_text(json.dumps(results), encoding="utf-8")

  workdir = shared_once("trained", train)
  test_ppl = json.loads((workdir / "results.json").read_text(encoding="utf-8"))["test_ppl"]
  return config, workdir, test_ppl, (workdir / "printed.txt").read_text(encoding="utf-8")

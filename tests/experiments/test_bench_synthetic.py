"""The synthetic-token training benchmark (the GPU check of the WikiText-103 rows), run small on the CPU."""

import importlib
import math

import pytest

from experiments.benchmarks.synthetic import run_synthetic, uniform_softmax_loss


def small(name, batch=4, length=8, **model):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()  # "default" or "<study>.<row>"
  config.batch_size, config.tgt_len = batch, length
  config.model.update(model)
  return config


@pytest.mark.parametrize(
  "name, model, tol",
  [
    ("default", dict(n_token=500, mem_len=8), 0.05),
    # Adaptive softmax: 12.32, not ln 3000 = 8.01. A target costs 6.2 (head), 12.4 or 13.8 (clusters),
    # so the mean over 1,024 targets has a standard error of ~0.09; the tolerance is 4 of them.
    ("default", dict(n_token=3000, cutoffs=(500, 1000), mem_len=8, batch=16, length=64), 0.36),
    ("wikitext2.trellisnet", dict(n_token=300, nhid=16, nout=8, d_embed=8), 0.05),
  ],
)
def test_untrained_model_scores_the_uniform_softmax_loss(name, model, tol):
  config = small(name, **model)
  result = run_synthetic(config, steps=2)
  expected = uniform_softmax_loss(config.model.n_token, config.model.get("cutoffs", ()))
  assert result["first_loss"] == pytest.approx(expected, abs=tol)
  assert len(result["ms_per_step"]) == 2 and all(t > 0 for t in result["ms_per_step"])
  assert result["tokens_per_s"] > 0
  assert result["compiled_bytes"] > 4 * result["params"]  # the step holds at least the parameters
  if config.execution == "deq":
    assert 1 <= result["f_steps"] <= config.model.max_iter and 1 <= result["b_steps"] <= config.model.backward_max_iter
  else:
    assert "f_steps" not in result


def test_uniform_softmax_loss_closed_form():
  assert uniform_softmax_loss(1000) == pytest.approx(math.log(1000))
  # head: 500 words + 2 cluster entries; clusters of 500 and 2000 words
  assert uniform_softmax_loss(3000, (500, 1000)) == pytest.approx(
    math.log(502) + (500 * math.log(500) + 2000 * math.log(2000)) / 3000
  )
  # the WikiText-103 rows' cutoffs (20k, 40k, 200k): an untrained model scores ~20.6, not ln V = 12.5
  assert uniform_softmax_loss(267_735, (20_000, 40_000, 200_000)) == pytest.approx(20.62, abs=0.01)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="n_token=0"):
    run_synthetic(small("default"), steps=1)  # the default takes its vocabulary from the data
  with pytest.raises(ValueError, match="steps must be >= 1"):
    run_synthetic(small("default", n_token=50), steps=0)
  config = small("copy_memory.tcn")
  with pytest.raises(ValueError, match="config.task='copy_memory'"):
    run_synthetic(config, steps=1)

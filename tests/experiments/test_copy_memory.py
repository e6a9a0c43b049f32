"""The copy-memory task: generator format and determinism, the memoryless loss, the models, smoke runs."""

import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from deqjax.data import copy_memory
from deqjax.models import TCN, DEQTransformerClassifierConfig, RecurrentClassifier, RecurrentConfig, TCNConfig
from deqjax.models.sequence import classifier_output
from deqjax.nn.weight_norm import causal_conv
from experiments import trainer
from experiments.analysis.runs import load_config, seed_workdirs
from experiments.trainer.models import abstract_model, build_model, count_parameters

ROWS = ("deq_transformer", "tcn", "lstm", "gru")
F64 = jnp.float64


def load(row):
  return load_config("copy_memory", row)


@pytest.mark.parametrize("T", [1, 5, 400])
def test_sequences_have_the_task_layout(T):
  inputs, targets = copy_memory.train_batch(seed=3, step=7, batch=64, T=T)
  assert inputs.shape == targets.shape == (64, T + 20) and inputs.dtype == np.int32
  digits = inputs[:, :10]
  assert digits.min() >= 1 and digits.max() <= 8
  assert np.all(inputs[:, 10 : T + 9] == 0)  # T - 1 blanks
  assert np.all(inputs[:, T + 9] == 9)  # the delimiter
  assert np.all(inputs[:, T + 10 :] == 0)  # 10 blanks while recalling
  assert np.all(targets[:, : T + 10] == 0)
  np.testing.assert_array_equal(targets[:, T + 10 :], digits)
  # Over 64 x 10 draws every digit 1..8 appears (probability of a miss < 1e-35).
  assert set(np.unique(digits)) == set(range(1, 9))


def test_batches_are_a_function_of_seed_and_step():
  a = copy_memory.train_batch(0, 5, 16, 30)
  np.testing.assert_array_equal(a[0], copy_memory.train_batch(0, 5, 16, 30)[0])
  assert not np.array_equal(a[0], copy_memory.train_batch(0, 6, 16, 30)[0])
  assert not np.array_equal(a[0], copy_memory.train_batch(1, 5, 16, 30)[0])
  rows = copy_memory.train_batch(0, 5, 16, 30, rows=(4, 12))
  np.testing.assert_array_equal(rows[0], a[0][4:12])  # a process's rows of the same global batch
  held = copy_memory.heldout_set(0, 16, 30)
  np.testing.assert_array_equal(held[0], copy_memory.heldout_set(0, 16, 30)[0])
  assert not np.array_equal(held[0], a[0])


def test_memoryless_loss_is_that_of_the_uniform_digit_guess():
  T = 400
  inputs, targets = copy_memory.heldout_set(0, 50, T)
  # Certain blanks where the target is a blank; a uniform guess over 1..8 at the ten recall positions.
  probs = np.zeros((50, T + 20, 10))
  probs[:, : T + 10, 0] = 1.0
  probs[:, T + 10 :, 1:9] = 1.0 / 8
  logits = jnp.log(jnp.asarray(probs, F64))
  loss = float(jnp.mean(classifier_output(logits, jnp.asarray(targets)).nll))
  assert loss == pytest.approx(10 * math.log(8) / 420, rel=1e-12)
  assert copy_memory.memoryless_loss(T) == pytest.approx(loss, rel=1e-12)
  assert round(loss, 4) == 0.0495  # the figure


def test_generator_rejects_bad_arguments():
  with pytest.raises(ValueError, match="T must be an int >= 1"):
    copy_memory.train_batch(0, 0, 4, 0)
  with pytest.raises(ValueError, match="step must be an int >= 0"):
    copy_memory.train_batch(0, -1, 4, 10)
  with pytest.raises(ValueError, match="batch must be an int >= 1"):
    copy_memory.heldout_set(0, 0, 10)


def test_parameter_counts_match_their_closed_forms():
  counts = {row: count_parameters(abstract_model(load(row)))[0] for row in ROWS}
  # LSTM and GRU: per gate W_i [10, h] + W_h [h, h] + b [h] (4 gates, 3 gates); head h x 10 + 10.
  lstm, gru = load("lstm").model.hidden, load("gru").model.hidden
  assert counts["lstm"] == 4 * (10 * lstm + lstm * lstm + lstm) + 10 * lstm + 10 == 14_108
  assert counts["gru"] == 3 * (10 * gru + gru * gru + gru) + 10 * gru + 10 == 14_208
  # TCN: per convolution v [k, d_in, d_out] + g + bias [d_out]; a 1x1 residual where widths differ; head.
  c = load("tcn").model
  ch, k = c.channels, c.kernel
  conv = lambda d_in: k * d_in * ch + 2 * ch
  tcn = conv(10) + conv(ch) + (10 * ch + ch) + (c.levels - 1) * 2 * conv(ch) + ch * 10 + 10
  assert counts["tcn"] == tcn == 15_993
  assert TCNConfig(n_token=10, channels=ch, levels=c.levels, kernel=k).receptive_field == 3571 >= 420
  # DEQ-Transformer: embedding, injection, the cell (weight-normalised qkv, r, o, ff1, ff2 and two biases), head.
  m = load("deq_transformer").model
  d, f = m.d_model, m.d_inner
  cell = (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * d + 2 * d) + (d * f + 2 * f) + (f * d + 2 * d)
  assert counts["deq_transformer"] == 10 * d + (3 * d * d + 3 * d) + cell + (10 * d + 10) == 14_010


@pytest.mark.parametrize("row", ROWS)
def test_models_are_causal(row):
  """Changing input 15 leaves the logits of positions < 15 unchanged (the DEQ: to its 1e-12 residual)."""
  model = build_model(load(row), nnx.Rngs(0))
  solve = dict(tol=1e-12, rtol=0.0, max_iter=300) if row == "deq_transformer" else {}
  inputs, targets = (jnp.asarray(a) for a in copy_memory.train_batch(0, 0, 2, 12))
  changed = inputs.at[:, 15].set(9 - inputs[:, 15])
  forward = nnx.jit(lambda model, x: model(x, targets, None, dtype=F64, **solve))
  outs = [forward(model, x) for x in (inputs, changed)]
  if row == "deq_transformer":
    assert all(int(s) == 0 for out in outs for s in out.info.status)  # converged (in ~185 steps at init)
  a, b = (out.logits for out in outs)
  np.testing.assert_allclose(a[:, :15], b[:, :15], atol=1e-9, rtol=0)
  assert float(jnp.max(jnp.abs(a[:, 15:] - b[:, 15:]))) > 1e-4


def test_attention_options_change_neither_the_loss_nor_its_gradient():
  # Storing each head's probabilities instead of recomputing them, and blocks of queries that score only the
  # keys they see, trade memory or wasted work for time only.
  config = load("deq_transformer")
  inputs, targets = (jnp.asarray(a) for a in copy_memory.train_batch(0, 0, 2, 12))
  solve = dict(tol=1e-12, rtol=0.0, max_iter=300, backward_tol=1e-12, backward_rtol=0.0, backward_max_iter=300)
  results = []
  for remat, chunks in ((True, 1), (False, 1), (False, 3)):
    config.model.update(remat_attention=remat, attention_chunks=chunks)
    model = build_model(config, nnx.Rngs(0))
    assert model.cell.f.keywords["attention_chunks"] == chunks  # what the solver's f computes with
    loss = lambda model: jnp.mean(model(inputs, targets, None, dtype=F64, **solve).nll)
    results.append(nnx.jit(nnx.value_and_grad(loss))(model))
  flat = lambda g: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(g)])
  loss_remat, grad_remat = results[0]
  scale = float(jnp.max(jnp.abs(flat(grad_remat))))
  assert scale > 0
  for loss, grad in results[1:]:
    assert abs(float(loss) - float(loss_remat)) < 1e-12
    np.testing.assert_allclose(flat(grad), flat(grad_remat), rtol=0, atol=1e-9 * scale)


def test_dilated_causal_conv_matches_its_definition():
  x = jax.random.normal(jax.random.key(0), (2, 9, 3), F64)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4), F64)
  weights = {"kernel": kernel, "bias": jnp.arange(4.0, dtype=F64)}
  y = causal_conv(weights, x, jnp.zeros((2, 4, 3), F64), dilation=2)
  padded = np.concatenate([np.zeros((2, 4, 3)), np.asarray(x)], axis=1)
  expected = sum(padded[:, 2 * j : 2 * j + 9] @ np.asarray(kernel[j]) for j in range(3)) + np.arange(4.0)
  np.testing.assert_allclose(y, expected, rtol=1e-12)
  with pytest.raises(ValueError, match="history has 2 positions; a 3-tap convolution with dilation 2 needs 4"):
    causal_conv(weights, x, jnp.zeros((2, 2, 3), F64), dilation=2)


def test_bad_model_configs_fail_clearly():
  with pytest.raises(ValueError, match="unknown cell='rnn'"):
    RecurrentConfig(cell="rnn", n_token=10, hidden=8)
  with pytest.raises(ValueError, match="levels must be an int >= 1"):
    TCNConfig(n_token=10, channels=4, levels=0, kernel=2)
  with pytest.raises(ValueError, match="d_model=30 is not divisible by n_head=4"):
    DEQTransformerClassifierConfig(n_token=10, d_model=30, n_head=4, d_inner=8)
  with pytest.raises(ValueError, match="attention_chunks must be an int >= 1"):
    DEQTransformerClassifierConfig(n_token=10, d_model=32, n_head=4, d_inner=8, attention_chunks=0)
  model = RecurrentClassifier(RecurrentConfig(cell="gru", n_token=10, hidden=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"targets \(2, 5\) must match the logits' leading axes \(2, 6\)"):
    model(jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(TypeError, match="tokens must be an integer array"):
    TCN(TCNConfig(n_token=10, channels=4, levels=1, kernel=2), rngs=nnx.Rngs(0))(jnp.zeros((2, 6)), None)


SMOKE = dict(batch_size=8, eval_batch_size=8, num_train_steps=6, log_every_steps=3, eval_every_steps=3)


def smoke_flags(row):
  """`smoke_config(row)` as command-line overrides of the row's config file."""
  flags = [f"--config.{k}={v}" for k, v in SMOKE.items()] + ["--config.data.T=20", "--config.data.heldout_size=16"]
  if row == "deq_transformer":
    flags += ["--config.pretrain_steps=3", "--config.model.max_iter=6", "--config.model.backward_max_iter=6"]
  return flags


def smoke_config(row, **overrides):
  config = load(row)
  config.update({**SMOKE, **overrides})
  config.data.update(T=20, heldout_size=16)
  if row == "deq_transformer":
    config.pretrain_steps = 3  # both training phases
    config.model.update(max_iter=6, backward_max_iter=6)
  return config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """row -> (workdir, results) of its smoke config's run, made once per module (the tests only read it)."""
  runs = {}

  def run(row):
    if row not in runs:
      workdir = tmp_path_factory.mktemp(f"smoke_{row}")
      runs[row] = workdir, trainer.train_and_evaluate(smoke_config(row), str(workdir))
    return runs[row]

  return run


@pytest.mark.parametrize("row", ROWS)
def test_each_config_trains_a_few_steps(row, smoke_run):
  workdir, results = smoke_run(row)
  result = results["test_loss"]
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  assert len(train_records) == 2 and all(np.isfinite(r["loss"]) for r in train_records)
  held = [r for r in records if "heldout_loss" in r]
  # Validation every 3 steps, and at the last step too where the config tests its best validated parameters.
  selecting = smoke_config(row).test_params == "best_valid"
  assert [r["step"] for r in held] == ([3, 6] if selecting else [3])
  assert all(0 <= r["digit_accuracy"] <= 1 for r in held)
  assert records[-1]["test_loss"] == result and 0 < result < math.log(10) + 0.5
  if selecting:  # the parameters tested are those of the validation with the lowest loss
    best = min(held, key=lambda r: r["heldout_loss"])
    assert records[-1]["test_params_step"] == best["step"]
  if row == "deq_transformer":
    assert train_records[0]["phase"] == "pretrain" and train_records[1]["phase"] == "deq"
    assert train_records[1]["f_steps"] >= 1 and train_records[1]["b_steps"] >= 1
  # Resuming a finished run on other data is refused.
  changed = smoke_config(row)
  changed.data.T = 21
  with pytest.raises(ValueError, match="was trained on .*'T': 20"):
    trainer.evaluate(changed, str(workdir))


def test_main_prints_the_test_loss_and_rejects_a_wrong_vocabulary(tmp_path):
  command = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/copy_memory/gru.py"]
  out = subprocess.run(
    [*command, f"--workdir={tmp_path}", *smoke_flags("gru")], capture_output=True, text=True, check=True
  ).stdout
  name, value = out.strip().splitlines()[-1].split("=")
  assert name == "test_loss" and 0 < float(value) < 10  # a plain float, not a numpy repr
  bad = smoke_config("gru")
  bad.model.n_token = 12
  with pytest.raises(ValueError, match="config.model.n_token=12, but the copy-memory task has 10 symbols"):
    trainer.setup(bad)  # main prints such errors in one line (test_training: the command-line errors)


def write_run(workdir, evals, test_loss, stolen=0.0):
  """A copy-memory metrics.jsonl: DEQ training records and held-out evaluations at (step, loss, seconds); with
  `stolen`, each record's unstolen_seconds is that share less (as a run on a busy host logs it)."""
  lines = [
    {"step": s, "loss": loss, "phase": "deq", "f_steps": 9.0, "b_steps": 7.0, "f_residual": 1e-3}
    for s, loss, _ in evals
  ]
  clocks = lambda t: {"train_seconds": t, **({"unstolen_seconds": t * (1 - stolen)} if stolen else {})}
  lines += [{"step": s, "heldout_loss": loss, "digit_accuracy": 1.0, **clocks(t)} for s, loss, t in evals]
  if test_loss is not None:
    lines.append({"step": evals[-1][0], "test_loss": test_loss, **clocks(evals[-1][2])})
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(line) for line in lines))


def test_table_reports_when_the_target_was_first_reached(tmp_path):
  from experiments.analysis import copy_memory_table

  write_run(
    tmp_path / "copy_memory" / "deq_transformer", [(250, 0.05, 600.0), (500, 5e-5, 1200.0), (750, 2e-5, 1800.0)], 2e-5
  )
  summary = copy_memory_table.row_summary(
    copy_memory_table.read_run(str(tmp_path / "copy_memory" / "deq_transformer")), 1e-4
  )
  assert summary["reached"] == (500, 1200.0 / 3600, 1200.0 / 3600) and summary["loss"] == 2e-5 and summary["finished"]
  assert (
    copy_memory_table.row_summary(copy_memory_table.read_run(str(tmp_path / "copy_memory" / "deq_transformer")), 1e-5)[
      "reached"
    ]
    is None
  )
  assert copy_memory_table.read_run(str(tmp_path / "copy_memory" / "tcn")) is None


def test_table_reports_the_test_solves(tmp_path):
  # A DEQ run whose test record carries its solves' figures shows them; one from before they were logged says so;
  # a model without solves shows nothing.
  from experiments.analysis import copy_memory_table

  evals = [(250, 0.05, 600.0), (500, 5e-5, 1200.0)]
  write_run(tmp_path / "old", evals, 5e-5)
  write_run(tmp_path / "new", evals, 5e-5)
  with open(tmp_path / "new" / "metrics.jsonl", "a") as f:  # the final record, as a run logs it since cf7494a
    f.write("\n" + json.dumps({"step": 500, "test_loss": 5e-5, "test_f_converged": 0.92, "test_f_residual_max": 3e-3}))
  line = lambda path: copy_memory_table.table_line("| DEQ |", copy_memory_table.read_run(str(path)), "3.5e-06", 1e-4)
  assert line(tmp_path / "new").endswith("| step 500, 0.33 h | 92% (3.000e-03) |")
  assert line(tmp_path / "old").endswith("| step 500, 0.33 h | not logged |")
  # A run that tested the parameters best on validation (test_params="best_valid") names their step.
  write_run(tmp_path / "best", evals, 5e-5)
  with open(tmp_path / "best" / "metrics.jsonl", "a") as f:
    f.write("\n" + json.dumps({"step": 500, "test_loss": 6e-5, "test_params_step": 250, "train_seconds": 1200.0}))
  assert line(tmp_path / "best").startswith("| DEQ | 6e-05 | 3.5e-06 | 500 (tested: 250) | 0.33 |")
  without_solves = copy_memory_table.read_run(str(tmp_path / "old"))
  without_solves["train"] = [{k: v for k, v in r.items() if k != "f_steps"} for r in without_solves["train"]]
  assert copy_memory_table.table_line("| GRU |", without_solves, "0.0491", 1e-4).endswith("| step 500, 0.33 h |  |")


def test_table_lists_other_seeds_under_their_row(tmp_path):

  write_run(tmp_path / "copy_memory" / "deq_transformer", [(250, 0.05, 600.0), (500, 5e-5, 1200.0)], 5e-5)
  write_run(
    tmp_path / "copy_memory" / "deq_transformer_seed3", [(250, 0.04, 700.0), (500, 2e-4, 1400.0)], None
  )  # still running
  write_run(
    tmp_path / "copy_memory" / "deq_transformer_seed12", [(250, 0.05, 650.0), (500, 8e-5, 1800.0)], 8e-5, stolen=0.25
  )
  write_run(tmp_path / "copy_memory" / "deq_transformer_seedx", [(250, 0.05, 650.0)], None)  # not a seed: ignored
  write_run(tmp_path / "copy_memory" / "tcn_seed1", [(250, 0.05, 650.0)], None)  # another row's
  assert seed_workdirs(str(tmp_path), "copy_memory", "deq_transformer") == [
    (3, str(tmp_path / "copy_memory" / "deq_transformer_seed3")),
    (12, str(tmp_path / "copy_memory" / "deq_transformer_seed12")),
  ]
  png = tmp_path / "table.png"
  command = [sys.executable, "-m", "experiments.analysis.copy_memory_table", f"--root={tmp_path}", f"--png={png}"]
  out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  rows = [line for line in out.splitlines() if line.startswith("| DEQ-Transformer")]
  assert [row.split(" | ")[0] for row in rows] == [
    "| DEQ-Transformer",
    "| DEQ-Transformer, seed 3",
    "| DEQ-Transformer, seed 12",
  ]
  # Wall-clock hours, and where the host stole a share, the hours it left (those a budget_clock "unstolen" counts).
  assert [row.split(" | ")[5] for row in rows] == ["0.33", "0.39", "0.50 (0.38 unstolen)"]
  assert "| 5e-05 | 3.5e-06 | 500 | 0.33 | 100.0% | step 500, 0.33 h |" in rows[0]
  assert "| 0.0002 (running) | 3.5e-06 | 500 | 0.39 | 100.0% | not reached |" in rows[1]
  assert "| 8e-05 | 3.5e-06 | 500 | 0.50 (0.38 unstolen) | 100.0% | step 500, 0.50 (0.38 unstolen) h |" in rows[2]
  assert "| TCN, seed 1 |" in out and "| LSTM | 14,108 (14K) | not run |" in out
  assert png.stat().st_size > 10_000


def test_best_valid_tests_the_parameters_that_scored_best_on_validation(tmp_path):
  # GRU at lr 0.3: validation goes up and down. The learning rate is constant (decay far beyond the run), so a
  # run stopped at the best step reaches the same parameters as the long run had there.
  fields = dict(
    learning_rate=0.3, warmup_steps=0, lr_decay_steps=10_000, num_train_steps=8, eval_every_steps=2,
    checkpoint_every_steps=3, test_params="best_valid",
  )  # fmt: skip
  config = smoke_config("gru", **fields)
  config.data.valid_seed = 7
  result = trainer.train_and_evaluate(config, str(tmp_path / "best"))
  records = [json.loads(line) for line in open(tmp_path / "best" / "metrics.jsonl")]
  valid = {r["step"]: r["heldout_loss"] for r in records if "heldout_loss" in r}
  assert sorted(valid) == [2, 4, 6, 8]  # validation at the last step too
  best = min(valid, key=valid.get)
  assert result["test_params_step"] == best and records[-1]["test_params_step"] == best
  assert best < 8, valid  # the selection is exercised: the last step is not the best
  # The same run stopped at the best step, tested on its last parameters: the same test loss, to the bit.
  short = smoke_config("gru", **{**fields, "num_train_steps": best, "test_params": "last"})
  short.data.valid_seed = 7
  assert trainer.train_and_evaluate(short, str(tmp_path / "short"))["test_loss"] == result["test_loss"]
  # A run stopped at step 6 and resumed to the end finds the best parameters in its checkpoint.
  resumed = smoke_config("gru", **{**fields, "num_train_steps": 6})
  resumed.data.valid_seed = 7
  trainer.train_and_evaluate(resumed, str(tmp_path / "resumed"))
  assert trainer.train_and_evaluate(config, str(tmp_path / "resumed")) == result
  # The checkpoint keeps those parameters: --mode=eval tests them again; with "last", the last ones.
  assert trainer.evaluate(config, str(tmp_path / "best"))["test_loss"] == result["test_loss"]
  config.test_params = "last"
  assert trainer.evaluate(config, str(tmp_path / "best"))["test_loss"] != result["test_loss"]
  # Validation on the test's own held-out set, or on a set of the same seed, cannot select.
  config.test_params = "best_valid"
  config.data.valid_seed = -1
  with pytest.raises(trainer.ConfigError, match=r"test_params='best_valid' with config.data.valid_seed=-1"):
    trainer.check_config(config)
  config.data.valid_seed = config.data.heldout_seed
  with pytest.raises(trainer.ConfigError, match=r"config.data.valid_seed=1234 equals config.data.heldout_seed"):
    trainer.check_config(config)


def test_ema_validates_and_tests_the_average_of_the_parameters_each_step_produced(tmp_path):
  fields = dict(
    learning_rate=0.3, warmup_steps=0, lr_decay_steps=10_000, num_train_steps=8, eval_every_steps=2,
    checkpoint_every_steps=1, keep_checkpoints=10, ema_decay=0.5, ema_from_step=4,
  )  # fmt: skip
  config = smoke_config("gru", **fields)
  workdir = str(tmp_path / "ema")
  result = trainer.train_and_evaluate(config, workdir)
  rt, params = trainer.setup(config)
  manager = trainer.checkpoint_manager(workdir, 10, create=False)
  memory = trainer.init_memory(rt, params, config.batch_size)
  restored = {
    s: trainer.restore_checkpoint(manager, rt, params, rt.optimizer.init(params), memory, s) for s in range(4, 9)
  }
  p = {s: restored[s].params for s in restored}
  # from_step 4: the average restarts at every update up to the 4th, then a_k = 0.5 a_(k-1) + 0.5 p_k, so
  # a_8 = 0.5^4 p_4 + 0.5 (0.5^3 p_5 + 0.5^2 p_6 + 0.5 p_7 + p_8).
  expected = jax.tree.map(
    lambda p4, p5, p6, p7, p8: 0.5**4 * p4 + 0.5 * (0.5**3 * p5 + 0.5**2 * p6 + 0.5 * p7 + p8), *(p[s] for s in p)
  )
  average = trainer.averaged_parameters(restored[8].opt_state)
  for got, want in zip(jax.tree.leaves(average), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  assert same(trainer.averaged_parameters(restored[4].opt_state), p[4])  # a_4 = p_4
  # Validation read the average (step 4: p_4 itself; step 6: a_6); the test too (a_8), not the last parameters.
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  valid = {r["step"]: r["heldout_loss"] for r in records if "heldout_loss" in r}
  assert sorted(valid) == [2, 4, 6]
  assert valid[4] == trainer.evaluate_task(rt, p[4], "layers", final=False)["heldout_loss"]
  a_6 = trainer.averaged_parameters(restored[6].opt_state)
  assert valid[6] == trainer.evaluate_task(rt, a_6, "layers", final=False)["heldout_loss"]
  assert valid[6] != trainer.evaluate_task(rt, p[6], "layers", final=False)["heldout_loss"]
  assert result["test_loss"] == trainer.evaluate_task(rt, average, "layers", final=True)["test_loss"]
  np.testing.assert_allclose(
    result["test_loss"], trainer.evaluate_task(rt, expected, "layers", final=True)["test_loss"], rtol=1e-5
  )
  last = trainer.evaluate_task(rt, p[8], "layers", final=True)["test_loss"]
  assert abs(last - result["test_loss"]) > 1e-3 * result["test_loss"], (last, result["test_loss"])
  # --mode=eval tests the average again; a run stopped at step 6 and resumed ends the same.
  assert trainer.evaluate(config, workdir)["test_loss"] == result["test_loss"]
  short = smoke_config("gru", **{**fields, "num_train_steps": 6})
  trainer.train_and_evaluate(short, str(tmp_path / "resumed"))
  assert trainer.train_and_evaluate(config, str(tmp_path / "resumed")) == result
  # Switching the average off (or on) over a checkpoint is refused, to train or to test.
  off = smoke_config("gru", **{**fields, "ema_decay": 0.0})
  for run in (trainer.train_and_evaluate, trainer.evaluate):
    with pytest.raises(ValueError, match=r"config.ema_decay: 0.5 in the checkpoint, 0.0 now"):
      run(off, workdir)
  # An average that would start after the last step.
  late = smoke_config("gru", **{**fields, "ema_from_step": 8})
  with pytest.raises(trainer.ConfigError, match=r"config.ema_from_step=8 with config.num_train_steps=8"):
    trainer.check_config(late)


def test_error_breakdown_accounts_for_the_test_figures_sequence_by_sequence(smoke_run):
  from experiments.analysis import copy_memory_errors as errors

  config = smoke_config("deq_transformer")
  workdir, results = smoke_run("deq_transformer")
  rt, params, phase = trainer.restore_trained(config, str(workdir))
  b = errors.sequence_breakdown(rt, params, phase)
  s = errors.summarize(b)
  n, length = config.data.heldout_size, copy_memory.sequence_length(config.data.T)
  assert b.nll.shape == (n, length) and b.digits.shape == b.recalled.shape == (n, 10)
  assert b.converged.shape == b.rel_residual.shape == (n,)
  # The rows are the held-out sequences in order: their digits are the test set's.
  inputs, targets = copy_memory.heldout_set(config.data.heldout_seed, n, config.data.T)
  np.testing.assert_array_equal(b.digits, inputs[:, :10])
  # Summed back up, the rows give the test's own figures.
  assert s["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
  assert np.mean(s["recall_position_loss"]) == pytest.approx(results["test_recall_loss"], rel=1e-5)
  assert s["wrong_digits"] == round((1 - results["test_digit_accuracy"]) * n * 10)
  assert s["converged"] == pytest.approx(results["test_f_converged"], abs=1e-9)
  assert s["rel_residual_max"] == pytest.approx(results["test_f_residual_max"], rel=1e-6)
  # The last 4 sequences of the second evaluation batch (one per device), through the model apart: the same rows.
  rows = slice(n - 4, n)
  out = trainer.model_forward(
    rt, params, inputs[rows], targets[rows], trainer.init_memory(rt, params, 4), key=None, phase=phase,
    max_iter=config.eval_max_iter or config.model.max_iter,
  )  # fmt: skip
  np.testing.assert_allclose(b.nll[rows], np.asarray(out.nll, np.float64), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(b.recalled[rows], np.argmax(out.logits[:, -10:], axis=-1))
  # The command prints the same report; a workdir without checkpoints is a one-line error.
  script, config_file = "experiments.analysis.copy_memory_errors", "experiments/configs/copy_memory/deq_transformer.py"
  command = [sys.executable, "-m", script, f"--config={config_file}", *smoke_flags("deq_transformer")]
  out = subprocess.run([*command, f"--workdir={workdir}", "--worst=3"], capture_output=True, text=True, check=True)
  assert out.stdout.strip().endswith("\n" + errors.report(b, s, worst=3, split="test"))  # after restore's line
  missing = subprocess.run([*command, f"--workdir={workdir / 'none'}"], capture_output=True, text=True)
  assert missing.returncode == 1 and "No checkpoints under --workdir=" in missing.stderr
  # Not a copy-memory run: refused, naming the task.
  wikitext = ml_collections.ConfigDict({"task": "wikitext103"})
  with pytest.raises(ValueError, match=r"config.task='wikitext103'"):
    errors.sequence_breakdown(types.SimpleNamespace(config=wikitext), params, phase)


def test_error_summary_and_report_on_a_breakdown_of_known_figures():
  from experiments.analysis import copy_memory_errors as errors

  # 4 sequences of 12 positions; sequence 2 recalls its first digit wrong (4 nats), sequence 0 its last two
  # (1 nat each), sequence 1 is unsure but right (0.5 nats), sequence 3 is perfect.
  nll = np.zeros((4, 12))
  nll[2, 2], nll[0, -2:], nll[1, :2] = 4.0, 1.0, 0.25  # positions 2-11 are the recall
  digits = np.arange(1, 41).reshape(4, 10) % 8 + 1
  recalled = digits.copy()
  recalled[2, 0], recalled[0, -2:] = 0, [0, 0]
  b = errors.Breakdown(nll, digits, recalled, np.array([1e-4, 2e-4, 9e-4, 5e-4]), np.array([True, True, False, True]))
  s = errors.summarize(b)
  assert s["loss"] == pytest.approx(6.5 / 48)
  assert s["share_of_worst"] == pytest.approx({1: 4 / 6.5, 3: 1.0}) and 10 not in s["share_of_worst"]
  np.testing.assert_allclose(s["recall_position_loss"], [4 / 4] + [0] * 7 + [1 / 4, 1 / 4])
  assert s["other_positions_loss"] == pytest.approx(0.5 / 8)
  assert s["wrong"] == [2, 0] and s["wrong_digits"] == 3
  assert s["loss_without_wrong"] == pytest.approx(0.5 / 24)
  assert s["converged"] == 0.75 and s["rel_residual_max"] == 9e-4
  text = errors.report(b, s, worst=1, split="test")
  assert "loss 0.1354 over 4 sequences of 12 positions; forward solves converged on 75.00%" in text
  assert "share of the loss in the worst sequences: 1: 61.5%, 3: 100.0%" in text
  assert "wrong digits: 3, in 2 sequences; the loss without those sequences: 0.02083" in text
  assert "sequence 2: 4 nats, solve's relative residual 0.0009; digits [6, 7, 8, 1," in text
  assert "(wrong at position 1)" in text and "sequence 0:" not in text and "... and 1 more (--worst)" in text
  assert "(wrong at position 9, 10)" in errors.report(b, s, worst=2, split="test")
  # Every sequence wrong: nothing left to average, and said so (a model without solves: no solve figures).
  b = b._replace(recalled=np.zeros_like(digits), rel_residual=None, converged=None)
  s = errors.summarize(b)
  assert s["wrong"] == [2, 0, 1, 3] and s["wrong_digits"] == 40 and np.isnan(s["loss_without_wrong"])
  text = errors.report(b, s, worst=4, split="valid")
  assert text.startswith("valid: loss 0.1354 over 4 sequences of 12 positions\n") and "residual" not in text
  assert "wrong digits: 40, in 4 sequences; every sequence has one" in text

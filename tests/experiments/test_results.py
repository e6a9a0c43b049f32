"""The WikiText-2 comparison: its configs (equal parameters, the sample's vocabulary) and the table's summary."""

import json
import math
import os
import subprocess
import sys

import pytest
from paths import REPO

from deqjax.data.wikitext import build_vocab
from experiments.analysis import wikitext2_table as results_table
from experiments.analysis.runs import deq_convergence, load_config, workdir
from experiments.configs.wikitext2 import common as wt2
from experiments.trainer.models import abstract_model, count_parameters


def load(row):
  return load_config("wikitext2", row)


def test_the_vocabulary_is_that_of_the_training_text():
  # Training text: the WikiText-2 validation file; its types plus <unk> (already in the file) and <eos>.
  with open(os.path.join(wt2.SAMPLE_DIR, "wiki.valid.tokens"), encoding="utf-8") as lines:
    assert len(build_vocab(lines)) == wt2.N_TOKEN == 13_777


def test_rows_compared_have_equal_non_embedding_parameters():
  counts = {row: count_parameters(abstract_model(load(row))) for row in results_table.ROWS}
  assert counts["deq_transformer"] == counts["transformer_xl_tied"] == (962_385, 66_880)  # one cell, tied
  untied = counts["transformer_xl_untied"][1]
  assert abs(untied / 66_880 - 1) < 0.002  # 4 narrower layers: 66,816
  # One TrellisNet cell, H = 96; the DEQ's recurrent convolution is spectrally normalised, which drops weight norm's
  # 4 H = 384 gains there (its injection convolution keeps them).
  assert counts["trellisnet"] == (554_481, 99_840) and counts["deq_trellisnet"] == (554_481 - 384, 99_840 - 384)
  for row in results_table.ROWS:  # every row trains against the same wall-clock budget
    config = load(row)
    assert config.train_budget_seconds == wt2.TRAIN_BUDGET_SECONDS
    assert config.data.name == "wikitext2_sample" and config.model.n_token == wt2.N_TOKEN


def _write_run(workdir, records):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def test_summary_reads_the_main_phase_and_the_test_result(tmp_path):
  config = load("deq_transformer")
  train = [
    {"step": 25, "mode": "pretrain", "loss": 7.0, "s_per_step": 0.1},
    {"step": 50, "mode": "deq", "loss": 6.5, "s_per_step": 0.3, "f_steps": 12.0},
    {"step": 75, "mode": "deq", "loss": 6.0, "s_per_step": 0.2, "f_steps": 13.0},
    {"step": 100, "mode": "deq", "loss": 5.9, "s_per_step": 0.9, "f_steps": 14.0},  # an evaluation in between
  ]
  evals = [{"step": 100, "valid_ppl": 410.0, "train_seconds": 31.0}]
  test = {"step": 100, "test_ppl": 400.5, "train_seconds": 31.0}
  # Logs written before the training phase's name changed say "mode": read the same.
  _write_run(workdir(tmp_path, "wikitext2", "deq_transformer"), [*train, *evals, test])
  summary = results_table.summarize(config, results_table.read_run(workdir(tmp_path, "wikitext2", "deq_transformer")))
  assert summary["test_ppl"] == 400.5 and summary["valid_ppl"] == 410.0
  assert (summary["steps"], summary["seconds"]) == (100, 31.0)
  assert summary["s_per_step"] == pytest.approx(0.3)  # the median of the DEQ phase's records only
  assert summary["tokens_per_s"] == pytest.approx(16 * 32 / 0.3)
  assert summary["convergence"]["deq_steps"] == 0  # a log from before the `converged` metric
  assert results_table._convergence(summary["convergence"]) == "not logged | not logged"
  # A run still going: no test record yet, the last validation is reported instead.
  trellisnet = workdir(tmp_path, "wikitext2", "trellisnet")
  _write_run(trellisnet, [{"step": 25, "phase": "pretrain", "loss": 7.0, "s_per_step": 0.2}])
  running = results_table.summarize(load("trellisnet"), results_table.read_run(trellisnet))
  assert running["test_ppl"] is None and running["steps"] == 25 and running["s_per_step"] == 0.2
  assert results_table.read_run(workdir(tmp_path, "wikitext2", "missing")) is None
  assert math.isclose(running["tokens_per_s"], 512 / 0.2)
  assert running["convergence"] is None and results_table._convergence(None) == "- | -"  # unrolled: no solves
  converged = {"converged": 0.925, "deq_steps": 400, "f_residual": 7.1e-4, "b_residual": 6.5e-4}
  assert results_table._convergence(converged) == "92.5% of 400 | 7.1e-04 / 6.5e-04"


def test_table_lists_other_seeds_under_their_row_and_compares_their_means(tmp_path):
  def finished(row, seed, test_ppl):
    records = [{"step": 50, "phase": "deq", "loss": 6.5, "s_per_step": 0.3}]
    records.append({"step": 100, "valid_ppl": test_ppl + 5, "train_seconds": 31.0})
    _write_run(workdir(tmp_path, "wikitext2", row, seed), [*records, {"step": 100, "test_ppl": test_ppl}])

  finished("deq_transformer", None, 270.0)
  finished("deq_transformer", 1, 260.0)
  finished("deq_transformer", 2, 266.0)
  finished("transformer_xl_tied", None, 269.0)
  _write_run(workdir(tmp_path, "wikitext2", "transformer_xl_tied", 1), [{"step": 25, "phase": "unrolled", "loss": 7.0}])
  _write_run(workdir(tmp_path, "wikitext2", "transformer_xl_tied_seedx"), [{"step": 25, "loss": 7.0}])  # no seed
  command = [sys.executable, "-m", "experiments.analysis.wikitext2_table", f"--root={tmp_path}", "--nomemory"]
  out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
  rows = [line.split(" | ")[:3] for line in out.splitlines() if line.startswith("| DEQ-Transformer")]
  assert [(name, ppl) for name, _, ppl in rows] == [
    ("| DEQ-Transformer", "270.0"),
    ("| DEQ-Transformer, seed 1", "260.0"),
    ("| DEQ-Transformer, seed 2", "266.0"),
  ]
  tied = [line.split(" | ")[2] for line in out.splitlines() if line.startswith("| Transformer-XL, weight-tied 16L")]
  assert tied == ["269.0", "(running)"]  # seed 1 has not evaluated yet
  means = [line.strip() for line in out.splitlines() if "mean over seeds" in line]  # the untied row has no run
  assert means == ["test ppl, mean over seeds: 265.3 (3 runs: 270.0, 260.0, 266.0) vs 269.0 (1 run: 269.0)"]


def test_training_plot_is_written_at_its_size(tmp_path):
  records = [
    {"step": 50, "phase": "deq", "loss": 6.5, "s_per_step": 0.3, "f_steps": 7.0, "b_steps": 6.0}
    | {"f_residual": 6e-4, "b_residual": 5e-4},
    {"step": 100, "valid_ppl": 410.0, "train_seconds": 31.0},
  ]
  run = workdir(tmp_path, "wikitext2", "deq_transformer")
  _write_run(run, records)
  path = tmp_path / "new_folder" / "training.png"  # the folder is made
  seed = workdir(tmp_path, "wikitext2", "deq_transformer", seed=1)
  _write_run(seed, records)
  runs = {("deq_transformer", None): results_table.read_run(run), ("deq_transformer", 1): results_table.read_run(seed)}
  results_table.plot(runs, str(path))
  header = path.read_bytes()[:24]
  assert header[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
  assert (width, height) == (13 * 80, round(3.6 * 80))  # figsize x 80 dpi: small enough for the repository


def test_stability_table_weighs_records_by_the_steps_they_cover(tmp_path):
  from experiments.analysis import stability_table

  # Pretraining up to step 100, then DEQ records at 125 (25 steps, 80 % converged), 150 (25 steps,
  # all) and 200 (50 steps, none): 0.8 * 25 + 25 + 0 = 45 of 100 steps.
  train = [
    {"step": 100, "phase": "pretrain", "loss": 7.0, "s_per_step": 0.1},
    {"step": 125, "phase": "deq", "loss": 6.9, "s_per_step": 0.4, "converged": 0.8, "f_converged": 0.9,
     "b_converged": 0.85, "f_residual": 2e-3, "b_residual": 1e-3},
    {"step": 150, "phase": "deq", "loss": 6.8, "s_per_step": 0.4, "converged": 1.0, "f_converged": 1.0,
     "b_converged": 1.0, "f_residual": 5e-4, "b_residual": 4e-4},
    {"step": 200, "phase": "deq", "loss": 6.7, "s_per_step": 0.7, "converged": 0.0, "f_converged": 0.5,
     "b_converged": 0.25, "f_residual": 4e-2, "b_residual": 1e-1},
  ]  # fmt: skip
  s = deq_convergence(train)
  assert s["deq_steps"] == 100 and s["converged"] == pytest.approx(0.45)
  assert s["f_converged"] == pytest.approx((0.9 * 25 + 25 + 0.5 * 50) / 100)
  assert s["s_per_step"] == pytest.approx((0.4 * 50 + 0.7 * 50) / 100)
  assert (s["f_residual"], s["b_residual"]) == (4e-2, 1e-1)  # the last record's
  # The levers column names what differs from the baseline, model fields under model.
  assert stability_table.levers("baseline") == "none (the main job before its levers: weight norm, caps 16)"
  assert stability_table.levers("fpc_jac_reg_002") == (
    "correction_weight=0.5, jac_reg=0.02, model.correction_steps=(3, 6)"
  )
  _write_run(workdir(tmp_path, "stability", "baseline"), [*train, {"step": 200, "test_ppl": 350.0}])
  table = stability_table.table(str(tmp_path))
  assert "| baseline | none (the main job before its levers: weight norm, caps 16) | 45.0% of 100 |" in table
  assert "350.00" in table
  assert "| jac_reg_005 | jac_reg=0.05 | not run |" in table

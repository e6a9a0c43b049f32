r"""The copy-memory table (the paper's Table 1) and its plot, from the runs' workdirs.

    python -m experiments.copy_memory_table --root=/work/runs --png=results/copy_memory.png

Reads `<root>/copy_{deq,tcn,lstm,gru}/metrics.jsonl` (the runs of
`python -m experiments.main --config=experiments/configs/copy_memory_<row>.py --workdir=<root>/copy_<short>`
for the rows deq_transformer, tcn, lstm, gru), prints a Markdown table beside the paper's numbers
and writes one PNG: held-out loss against training time for every row, and the
DEQ's forward / backward solver steps over training. Rows without a workdir are
listed as not run.
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags

from deqjax.data.copy_memory import memoryless_loss
from experiments import plots
from experiments.model_builder import abstract_model, count_parameters
from experiments.train_metrics import read_metrics

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("root", "/tmp", "Folder holding the copy_<row> workdirs.")
  flags.DEFINE_string("png", "", "Where to write the plot ('' : no plot).")
  flags.DEFINE_float("target", 1e-4, "The held-out loss a row must reach (the DEQ's target).")


ROWS = ("deq_transformer", "tcn", "lstm", "gru")
NAMES = {"deq_transformer": "DEQ-Transformer", "tcn": "TCN", "lstm": "LSTM", "gru": "GRU"}
WORKDIRS = {"deq_transformer": "copy_deq", "tcn": "copy_tcn", "lstm": "copy_lstm", "gru": "copy_gru"}


def read_run(workdir: str) -> dict | None:
  """Training records, evaluation records and the final test loss of one workdir (None: no metrics)."""
  return read_metrics(workdir, "heldout_loss", "test_loss")


def row_summary(run: dict, target: float) -> dict:
  """Last held-out loss, steps, hours, and when the loss first reached `target`."""
  evals = run["evals"]
  last = run["test"] or (evals[-1] if evals else {})
  loss = last.get("test_loss", last.get("heldout_loss"))
  reached = next((e for e in evals if e["heldout_loss"] <= target), None)
  if run["test"] is not None and loss <= target and reached is None:
    reached = run["test"]
  return {
    "loss": loss,
    "step": last.get("step", run["train"][-1]["step"] if run["train"] else 0),
    "hours": last.get("train_seconds", 0.0) / 3600,
    "finished": run["test"] is not None,
    "reached": None if reached is None else (reached["step"], reached["train_seconds"] / 3600),
    "accuracy": evals[-1]["digit_accuracy"] if evals else None,
  }


def main(argv):
  del argv
  print(f"Copy memory, T = 400; a model without memory scores {memoryless_loss(400):.4f}.\n")
  print("| model | parameters (paper) | held-out loss | paper | steps | hours | digits right | loss <= target at |")
  print("|---|---|---|---|---|---|---|---|")
  runs = {}
  for row in ROWS:
    config = importlib.import_module(f"experiments.configs.copy_memory_{row}").get_config()
    params, _ = count_parameters(abstract_model(config))
    head = f"| {NAMES[row]} | {params:,} ({config.paper.params}) |"
    run = read_run(os.path.join(FLAGS.root, WORKDIRS[row]))
    if run is None or not run["train"]:
      print(f"{head} not run | {config.paper.loss:.3g} | | | | |")
      continue
    runs[row] = run
    s = row_summary(run, FLAGS.target)
    status = "" if s["finished"] else " (running)"
    reached = "not reached" if s["reached"] is None else f"step {s['reached'][0]}, {s['reached'][1]:.2f} h"
    accuracy = "" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
    print(
      f"{head} {s['loss']:.3g}{status} | {config.paper.loss:.3g} | {s['step']} | {s['hours']:.2f} |"
      f" {accuracy} | {reached} |"
    )
  if FLAGS.png and runs:
    plot(runs, FLAGS.png)
    print(f"\nwrote {FLAGS.png}")


def plot(runs: dict, path: str) -> None:
  fig, (ax_loss, ax_solver) = plots.subplots(1, 2, figsize=(10, 3.6))
  for row, run in runs.items():
    hours = [e["train_seconds"] / 3600 for e in run["evals"]]
    ax_loss.plot(hours, [e["heldout_loss"] for e in run["evals"]], marker=".", label=NAMES[row])
  ax_loss.axhline(memoryless_loss(400), color="gray", linestyle="--", linewidth=1, label="no memory")
  ax_loss.axhline(FLAGS.target, color="black", linestyle=":", linewidth=1, label="target")
  ax_loss.set(yscale="log", xlabel="training hours (2-core CPU)", ylabel="held-out loss", title="Copy memory, T = 400")
  ax_loss.legend(fontsize=8)
  deq = [r for r in runs.get("deq_transformer", {"train": []})["train"] if "f_steps" in r]
  if deq:
    steps = [r["step"] for r in deq]
    ax_solver.plot(steps, [r["f_steps"] for r in deq], label="forward steps")
    ax_solver.plot(steps, [r["b_steps"] for r in deq], label="backward steps")
    ax_res = ax_solver.twinx()
    ax_res.plot(steps, [r["f_residual"] for r in deq], color="gray", linewidth=0.8, label="forward residual")
    ax_res.set(yscale="log", ylabel="relative residual")
    ax_solver.set(xlabel="training step", ylabel="solver steps", title="DEQ-Transformer solver")
    ax_solver.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  plots.save(fig, path)


if __name__ == "__main__":
  define_flags()
  app.run(main)

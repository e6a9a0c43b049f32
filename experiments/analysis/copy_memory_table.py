r"""The copy-memory table (the paper's Table 1) and its plot, from the runs' workdirs.

    python -m experiments.analysis.copy_memory_table --root=results --png=results/copy_memory/copy_memory.png

Reads `<root>/copy_memory/<row>/metrics.jsonl` (the runs of
`python -m experiments.main --config=experiments/configs/copy_memory/<row>.py --workdir=<root>/copy_memory/<row>`
for the rows deq_transformer, tcn, lstm, gru), prints a Markdown table beside the paper's numbers
and writes one PNG: held-out loss against training time for every row, and the
DEQ's forward / backward solver steps over training. Rows without a workdir are
listed as not run. Runs of the same config with another seed, in `<root>/copy_memory/<row>_seed<N>`
(`--config.seed=N`), are listed and drawn under their row as "<model>, seed N".
"""

from __future__ import annotations

from absl import app, flags

from deqjax.data.copy_memory import memoryless_loss
from experiments.analysis import plots
from experiments.analysis.paper import PAPER
from experiments.analysis.runs import load_config, read_metrics, run_label, seed_workdirs, workdir
from experiments.trainer.models import abstract_model, count_parameters

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("root", "results", "Folder holding the copy_memory/<row> workdirs.")
  flags.DEFINE_string("png", "", "Where to write the plot ('' : no plot).")
  flags.DEFINE_float("target", 1e-4, "The held-out loss a row must reach (the DEQ's target).")


ROWS = ("deq_transformer", "tcn", "lstm", "gru")
NAMES = {row: PAPER["copy_memory"][row].label for row in ROWS}


def read_run(workdir: str) -> dict | None:
  """Training records, evaluation records and the final test loss of one workdir (None: no metrics)."""
  return read_metrics(workdir, "heldout_loss", "test_loss")


def row_summary(run: dict, target: float) -> dict:
  """Last held-out loss, steps, hours (wall clock, and less the time the host stole: `unstolen_hours`, the same
  for logs from before it was measured), and when the loss first reached `target`: (step, hours, unstolen hours)."""
  evals = run["evals"]
  last = run["test"] or (evals[-1] if evals else {})
  loss = last.get("test_loss", last.get("heldout_loss"))
  reached = next((e for e in evals if e["heldout_loss"] <= target), None)
  if run["test"] is not None and loss <= target and reached is None:
    reached = run["test"]
  hours, unstolen_hours = _hours(last)
  return {
    "loss": loss,
    "step": last.get("step", run["train"][-1]["step"] if run["train"] else 0),
    "hours": hours,
    "unstolen_hours": unstolen_hours,
    "finished": run["test"] is not None,
    "reached": None if reached is None else (reached["step"], *_hours(reached)),
    "accuracy": evals[-1]["digit_accuracy"] if evals else None,
    "solves": _test_solves(run),
    "tested_step": last.get("test_params_step"),  # test_params="best_valid": the step whose parameters were tested
  }


def _test_solves(run: dict) -> str:
  """How the DEQ test's own forward solves ended, '92% (3.000e-03)': the share converged and the largest relative
  residual; 'not logged' for a DEQ run whose log predates them, '' for a model without solves."""
  test = run["test"] or {}
  if "test_f_converged" in test:
    return f"{100 * test['test_f_converged']:.3g}% ({test['test_f_residual_max']:.3e})"
  return "not logged" if any("f_steps" in record for record in run["train"]) else ""


def _hours(record: dict) -> tuple[float, float]:
  """A record's training time in hours: wall clock, and less the time the host stole (the wall clock where the
  record predates `unstolen_seconds`)."""
  seconds = record.get("train_seconds", 0.0)
  return seconds / 3600, record.get("unstolen_seconds", seconds) / 3600


def _clock(hours: float, unstolen_hours: float) -> str:
  """'1.89' or, where the host stole a visible share, '1.95 (1.89 unstolen)' (the clock a budget "unstolen" counts)."""
  return f"{hours:.2f}" if unstolen_hours >= 0.995 * hours else f"{hours:.2f} ({unstolen_hours:.2f} unstolen)"


def table_line(head: str, run: dict, paper: str, target: float) -> str:
  """The Markdown row of one run after `head` (model, parameters): loss, paper, steps, hours, digits, target."""
  s = row_summary(run, target)
  status = "" if s["finished"] else " (running)"
  reached = "not reached" if s["reached"] is None else f"step {s['reached'][0]}, {_clock(*s['reached'][1:])} h"
  accuracy = "" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
  hours = _clock(s["hours"], s["unstolen_hours"])
  steps = s["step"] if s["tested_step"] in (None, s["step"]) else f"{s['step']} (tested: {s['tested_step']})"
  return f"{head} {s['loss']:.3g}{status} | {paper} | {steps} | {hours} | {accuracy} | {reached} | {s['solves']} |"


def main(argv):
  del argv
  print(f"Copy memory, T = 400; a model without memory scores {memoryless_loss(400):.4f}.\n")
  print(
    "| model | parameters (paper) | held-out loss | paper | steps | hours | digits right | loss <= target at"
    " | test solves converged (largest residual) |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  runs = []  # (row, seed or None for the config's own, run), in table order
  for row in ROWS:
    config = load_config("copy_memory", row)
    params, _ = count_parameters(abstract_model(config))
    paper_row = PAPER["copy_memory"][row]
    paper = f"{paper_row.loss:.3g}"
    for seed, path in [(None, workdir(FLAGS.root, "copy_memory", row)), *seed_workdirs(FLAGS.root, "copy_memory", row)]:
      head = f"| {run_label(NAMES[row], seed)} | {params:,} ({1000 * paper_row.params_m:.0f}K) |"
      run = read_run(path)
      if run is None or not run["train"]:
        print(f"{head} not run | {paper} | | | | | |")
        continue
      runs.append((row, seed, run))
      print(table_line(head, run, paper, FLAGS.target))
  if FLAGS.png and runs:
    plot(runs, FLAGS.png)
    print(f"\nwrote {FLAGS.png}")


def plot(runs: list, path: str) -> None:
  """Left: held-out loss against training hours, one line per run. Right: the DEQ runs' solver steps and residual."""
  fig, (ax_loss, ax_solver) = plots.subplots(1, 2, figsize=(10, 4.2))
  for row, seed, run in runs:
    hours = [e["train_seconds"] / 3600 for e in run["evals"]]
    ax_loss.plot(hours, [e["heldout_loss"] for e in run["evals"]], marker=".", label=run_label(NAMES[row], seed))
  ax_loss.axhline(memoryless_loss(400), color="gray", linestyle="--", linewidth=1, label="no memory")
  ax_loss.axhline(FLAGS.target, color="black", linestyle=":", linewidth=1, label="target")
  ax_loss.set(yscale="log", xlabel="training hours (2-core CPU)", ylabel="held-out loss", title="Copy memory, T = 400")
  ax_loss.legend(fontsize=7)
  deq_runs = [(seed, run) for row, seed, run in runs if row == "deq_transformer"]
  if deq_runs:
    plot_solver(ax_solver, deq_runs)
  else:
    ax_solver.set_visible(False)
  fig.tight_layout()
  plots.save(fig, path)


def plot_solver(ax_steps, deq_runs: list) -> None:
  """Forward / backward solver steps (left axis) and forward relative residual (right axis) over training steps
  of the DEQ runs, (seed, run) each: the config's own seed (None) solid, other seeds dashed."""
  ax_res = ax_steps.twinx()
  for seed, run in deq_runs:
    deq = [r for r in run["train"] if "f_steps" in r]
    steps = [r["step"] for r in deq]
    style = dict(linestyle="-", linewidth=1.2) if seed is None else dict(linestyle="--", linewidth=0.9)
    suffix = "" if seed is None else f", seed {seed}"
    ax_steps.plot(steps, [r["f_steps"] for r in deq], color="C0", label=f"forward steps{suffix}", **style)
    ax_steps.plot(steps, [r["b_steps"] for r in deq], color="C1", label=f"backward steps{suffix}", **style)
    ax_res.plot(steps, [r["f_residual"] for r in deq], color="gray", label=f"forward residual{suffix}", **style)
  ax_res.set(yscale="log", ylabel="relative residual")
  ax_steps.set(xlabel="training step", ylabel="solver steps", title="DEQ-Transformer solver")
  lines = ax_steps.get_lines() + ax_res.get_lines()
  labels = [line.get_label() for line in lines]
  ax_steps.legend(lines, labels, fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))


if __name__ == "__main__":
  define_flags()
  app.run(main)

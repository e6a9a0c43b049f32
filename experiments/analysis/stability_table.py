r"""The stability ablation table: each lever's convergence rate, test perplexity and step time.

    python -m experiments.analysis.stability_table --root=results

Reads `<root>/stability/<row>/metrics.jsonl`, the runs of
`python -m experiments.main --config=experiments/configs/stability/<row>.py --workdir=<root>/stability/<row>`
(the README's main job with the row's levers; `baseline` is the main job itself), and prints a
Markdown table. A DEQ step counts as converged when every sample's forward and backward solve
converged (the `converged` metric, 1 or 0 per step); each log record averages the steps since the
one before, so the run's rate weighs each record by the steps it covers. Rows without a workdir are
listed as not run.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.analysis.runs import deq_convergence, load_config, read_metrics, workdir

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("root", "results", "Folder holding the stability/<row> workdirs.")


def rows() -> list[str]:
  """The rows: `experiments/configs/stability/<row>.py`, baseline first, then by name."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "stability")
  names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f not in ("__init__.py", "common.py"))
  return sorted(names, key=lambda name: name != "baseline")


def levers(row: str) -> str:
  """The row's config fields that differ from the baseline's, as `field=value` (model fields as `model.field`)."""
  flat = lambda config: {
    **{k: v for k, v in config.items() if k not in ("model", "data", "row")},
    **{f"model.{k}": v for k, v in config.model.items()},
  }
  base, mine = flat(load_config("stability", "baseline")), flat(load_config("stability", row))
  changed = [f"{k}={mine[k]}" for k in sorted(mine) if base.get(k) != mine[k]]
  return ", ".join(changed) or "none (the main job before its levers: weight norm, caps 16)"


def table(root: str) -> str:
  """The Markdown table of every row (those without a run listed as not run)."""
  lines = [
    "| row | levers | DEQ steps converged (fwd & bwd) | fwd / bwd samples converged | last residuals fwd / bwd"
    " | test ppl | s / DEQ step (x baseline) |",
    "|---|---|---|---|---|---|---|",
  ]
  base_step = None
  for row in rows():
    run = read_metrics(workdir(root, "stability", row), "valid_ppl", "test_ppl")
    if run is None or run["test"] is None or not run["train"]:
      lines.append(f"| {row} | {levers(row)} | not run | | | | |")
      continue
    s = deq_convergence(run["train"])
    base_step = s["s_per_step"] if row == "baseline" else base_step
    ratio = f" ({s['s_per_step'] / base_step:.2f}x)" if base_step else ""
    lines.append(
      f"| {row} | {levers(row)} | {s['converged']:.1%} of {s['deq_steps']} | {s['f_converged']:.1%} / "
      f"{s['b_converged']:.1%} | {s['f_residual']:.1e} / {s['b_residual']:.1e} | {run['test']['test_ppl']:.2f} |"
      f" {s['s_per_step']:.3f}{ratio} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  print(table(FLAGS.root))


if __name__ == "__main__":
  define_flags()
  app.run(main)

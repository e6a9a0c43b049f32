r"""The equal-parameter, equal-time WikiText-2 comparison: one table beside the paper's claims, and a plot.

    python -m experiments.analysis.wikitext2_table --root=workdirs [--png=results/wt2_training.png]

Reads `<root>/wikitext2/<row>/metrics.jsonl`, the runs of
`python -m experiments.main --config=experiments/configs/wikitext2/<row>.py --workdir=<root>/wikitext2/<row>`
(rows: deq_transformer, transformer_xl_tied, transformer_xl_untied, deq_trellisnet, trellisnet), and prints
  * per row: parameters (all / non-embedding), test perplexity, for the DEQs the share of DEQ steps
    whose solves all converged forward and backward and the last logged residuals
    (`runs.deq_convergence`), training steps and seconds, the median time per step of the row's main
    phase and its tokens/s, and the training-step memory of the body (XLA's compiled memory analysis,
    embeddings excluded as in the paper) at the rows' training shape and at the paper's batch
    15 x length 150, beside the paper's perplexity and GB;
  * the DEQ against each baseline: perplexity, memory saving, time per step (paper: 2.82x slower).
The PNG shows validation perplexity against training time for every row, and the DEQ rows'
forward / backward solver steps and forward residual over training (the paper's Figure 2 analogue).
Rows without a workdir are listed as not run. Runs of a row's config with another seed
(`--config.seed=N --workdir=<root>/wikitext2/<row>_seed<N>`) are listed under their row as
"<model>, seed N", and each comparison adds the mean test perplexity over every finished seed of its
two rows when either has more than one.
"""

from __future__ import annotations

import statistics

from absl import app, flags

from experiments import trainer
from experiments.analysis import plots
from experiments.analysis.memory_table import step_memory
from experiments.analysis.paper import paper_row
from experiments.analysis.runs import deq_convergence, load_config, read_metrics, run_label, seed_workdirs, workdir
from experiments.trainer.models import abstract_model, count_parameters

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("root", "workdirs", "Folder holding the <study>/<row> workdirs.")
  flags.DEFINE_string("png", "", "Where to write the training plot ('': no plot).")
  flags.DEFINE_bool("memory", True, "Compile each row's training step for its memory (about a minute in all).")


ROWS = ("deq_transformer", "transformer_xl_tied", "transformer_xl_untied", "deq_trellisnet", "trellisnet")
NAMES = {
  "deq_transformer": "DEQ-Transformer",
  "transformer_xl_tied": "Transformer-XL, weight-tied 16L",
  "transformer_xl_untied": "Transformer-XL, untied 4L",
  "deq_trellisnet": "DEQ-TrellisNet",
  "trellisnet": "TrellisNet, 16L",
}
COMPARISONS = (
  ("deq_transformer", "transformer_xl_tied"),
  ("deq_transformer", "transformer_xl_untied"),
  ("deq_trellisnet", "trellisnet"),
)
PAPER_SHAPE = (15, 150)  # the paper's memory column: batch 15, length 150
GB = 1e9


def read_run(workdir: str) -> dict | None:
  """Training records, validation records and the test record of one workdir (None: no metrics)."""
  return read_metrics(workdir, "valid_ppl", "test_ppl")


def summarize(config, run: dict) -> dict:
  """Test perplexity, steps, training seconds, median s/step of the main phase and its tokens/s; for a DEQ,
  the share of its DEQ steps whose solves all converged and the last logged residuals (`deq_convergence`)."""
  last = run["test"] or (run["evals"][-1] if run["evals"] else run["train"][-1])
  main = [r["s_per_step"] for r in run["train"] if r["phase"] == trainer.final_phase(config)]
  s_per_step = statistics.median(main) if main else float("nan")
  return {
    "test_ppl": run["test"]["test_ppl"] if run["test"] else None,
    "valid_ppl": run["evals"][-1]["valid_ppl"] if run["evals"] else None,
    "steps": last["step"],
    "seconds": last.get("train_seconds", 0.0),
    "s_per_step": s_per_step,
    "tokens_per_s": config.batch_size * config.tgt_len / s_per_step,
    "convergence": deq_convergence(run["train"]) if config.execution == "deq" else None,
  }


def body_memory(config) -> tuple[float, float]:
  """Training-step memory of the body in GB: at the row's training shape, and at the paper's 15 x 150."""
  own = step_memory(config, config.batch_size, config.tgt_len)["total"] / GB
  paper = step_memory(config, *PAPER_SHAPE)["total"] / GB
  return own, paper


def main(argv):
  del argv
  table, runs = {}, {}  # keyed by (row, seed): seed None for the config's own
  for row in ROWS:
    config = load_config("wikitext2", row)
    params, non_embedding = count_parameters(abstract_model(config))
    memory = body_memory(config) if FLAGS.memory else None
    for seed, path in [(None, workdir(FLAGS.root, "wikitext2", row)), *seed_workdirs(FLAGS.root, "wikitext2", row)]:
      entry = {"config": config, "params": params, "non_embedding": non_embedding}
      run = read_run(path)
      if run is not None and run["train"]:
        runs[row, seed] = run
        entry.update(summarize(config, run))
      if memory:
        entry["memory"] = memory
      table[row, seed] = entry
  print_table(table)
  print_comparisons(table)
  if FLAGS.png and runs:
    plot(runs, FLAGS.png)
    print(f"\nwrote {FLAGS.png}")


def print_table(table: dict) -> None:
  batch, length = next(iter(table.values()))["config"].batch_size, next(iter(table.values()))["config"].tgt_len
  print(f"WikiText-2 (train: validation file; test: test file), {batch} x {length} tokens per step.\n")
  print(
    f"| model | params (non-emb.) | test ppl | DEQ steps converged | last residuals fwd / bwd | steps | train s |"
    f" s/step | tokens/s | memory GB {batch}x{length} | memory GB 15x150 | paper's row (WT103) | paper ppl | paper GB |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for (row, seed), e in table.items():
    paper = paper_row("wikitext2", row)
    memory = e.get("memory")
    mem = f"{memory[0]:.3f} | {memory[1]:.2f}" if memory else " | "
    head = f"| {run_label(NAMES[row], seed)} | {e['params']:,} ({e['non_embedding']:,}) |"
    tail = f" {mem} | {paper.label} | {paper.ppl} | {paper.memory_gb} |"
    if "steps" not in e:
      print(f"{head} not run | | | | | | |{tail}")
      continue
    if e["test_ppl"]:
      ppl = f"{e['test_ppl']:.1f}"
    else:
      ppl = f"(valid {e['valid_ppl']:.1f}, running)" if e["valid_ppl"] else "(running)"
    print(
      f"{head} {ppl} | {_convergence(e['convergence'])} | {e['steps']} | {e['seconds']:.0f} | {e['s_per_step']:.3f} |"
      f" {e['tokens_per_s']:.0f} |{tail}"
    )


def _convergence(c: dict | None) -> str:
  """The two convergence cells of a row: '-' for a model that solves nothing, 'not logged' for old logs."""
  if c is None:
    return "- | -"
  if not c["deq_steps"]:
    return "not logged | not logged"
  return f"{c['converged']:.1%} of {c['deq_steps']} | {c['f_residual']:.1e} / {c['b_residual']:.1e}"


def print_comparisons(table: dict) -> None:
  print("\nThe DEQ against each baseline (paper: WikiText-103 rows; 2.82x the training time of a transformer):")
  for deq, base in COMPARISONS:
    d, b = table[deq, None], table[base, None]
    paper_d, paper_b = paper_row("wikitext2", deq), paper_row("wikitext2", base)
    parts = []
    if d.get("test_ppl") and b.get("test_ppl"):
      paper = f"paper {paper_d.ppl} vs {paper_b.ppl}"
      parts.append(f"test ppl {d['test_ppl']:.1f} vs {b['test_ppl']:.1f} ({paper})")
    if "memory" in d and "memory" in b:
      saved = [100 * (1 - m_d / m_b) for m_d, m_b in zip(d["memory"], b["memory"], strict=True)]
      paper = 100 * (1 - paper_d.memory_gb / paper_b.memory_gb)
      train_shape, long_shape = (f"{abs(v):.0f}% {'less' if v >= 0 else 'more'}" for v in saved)
      parts.append(f"memory {train_shape} at the training shape, {long_shape} at 15x150 (paper {paper:.0f}% less)")
    if "s_per_step" in d and "s_per_step" in b:
      parts.append(f"{d['s_per_step'] / b['s_per_step']:.2f}x the time per step")
    print(f"  {NAMES[deq]} vs {NAMES[base]}: " + "; ".join(parts))
    d_ppl, b_ppl = (_tested(table, row) for row in (deq, base))
    if d_ppl and b_ppl and max(len(d_ppl), len(b_ppl)) > 1:
      print(f"    test ppl, mean over seeds: {_mean(d_ppl)} vs {_mean(b_ppl)}")


def _tested(table: dict, row: str) -> list[float]:
  """The test perplexities of every finished run of `row`, the config's seed first."""
  return [e["test_ppl"] for (r, _), e in table.items() if r == row and e.get("test_ppl")]


def _mean(values: list[float]) -> str:
  """'265.0 (2 runs: 270.0, 260.0)'."""
  runs = f"{len(values)} run{'s' if len(values) > 1 else ''}"
  return f"{statistics.mean(values):.1f} ({runs}: {', '.join(f'{v:.1f}' for v in values)})"


def plot(runs: dict, path: str) -> None:
  fig, (ax_ppl, ax_steps, ax_res) = plots.subplots(1, 3, figsize=(13, 3.6))
  for (row, seed), run in runs.items():
    minutes = [e["train_seconds"] / 60 for e in run["evals"]]
    style = dict(marker=".") if seed is None else dict(linestyle="--", linewidth=0.9)
    style["color"] = f"C{ROWS.index(row)}"  # a row's seeds share its colour
    ax_ppl.plot(minutes, [e["valid_ppl"] for e in run["evals"]], label=run_label(NAMES[row], seed), **style)
  ax_ppl.set(yscale="log", xlabel="training minutes (one CPU core)", ylabel="validation perplexity")
  ax_ppl.set_title("WikiText-2, equal time and parameters", fontsize=10)
  ax_ppl.legend(fontsize=7)
  for row in ("deq_transformer", "deq_trellisnet"):
    deq = [r for r in runs.get((row, None), {"train": []})["train"] if "f_steps" in r]  # the config's seed
    if not deq:
      continue
    steps = [r["step"] for r in deq]
    (line,) = ax_steps.plot(steps, [r["f_steps"] for r in deq], label=f"{NAMES[row]} forward")
    ax_steps.plot(steps, [r["b_steps"] for r in deq], linestyle="--", color=line.get_color(), label="  backward")
    ax_res.plot(steps, [r["f_residual"] for r in deq], color=line.get_color(), label=f"{NAMES[row]} forward")
    ax_res.plot(steps, [r["b_residual"] for r in deq], linestyle="--", color=line.get_color(), label="  backward")
  ax_steps.set(xlabel="training step", ylabel="solver steps (cap 24)", title="Solver steps over training")
  ax_res.set(xlabel="training step", ylabel="relative residual", yscale="log", title="Final residual over training")
  for ax in (ax_steps, ax_res):
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
  fig.tight_layout()
  plots.save(fig, path)


if __name__ == "__main__":
  define_flags()
  app.run(main)

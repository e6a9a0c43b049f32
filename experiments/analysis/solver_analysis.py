r"""The solvers on trained DEQ language models: residual against iteration, and perplexity against the cap.

    python -m experiments.analysis.solver_analysis --root=workdirs [--out=results] [--segments=100]

For the trained WikiText-2 DEQs (`<root>/wikitext2/deq_transformer`, `<root>/wikitext2/deq_trellisnet`;
see `experiments.analysis.wikitext2_table`), on the test file:
  * residual against iteration: after `--warm_segments` segments of memory-cached evaluation,
    the next segment's equilibrium is solved with Broyden (full history, as the reference),
    Anderson (memory 5) and plain fixed-point iteration, `--iters` steps each with no tolerance;
    the median over the rows of ||f(z_k) - z_k|| / ||f(z_0) - z_0|| (z_0 = 0) is printed and plotted
    (`<out>/solver_residuals.png`);
  * perplexity against the forward iteration cap at evaluation (the paper's Figure 3 analogue): the
    first `--segments` test segments, memory carried, Broyden capped at each of `--caps`
    (`<out>/ppl_vs_cap.png`).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import app, flags

import deqjax
from deqjax.data import OrderedLMStream
from experiments import trainer
from experiments.analysis import plots
from experiments.analysis.runs import load_config, workdir
from experiments.analysis.wikitext2_table import NAMES

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  flags.DEFINE_string("root", "workdirs", "Folder holding the <study>/<row> workdirs.")
  flags.DEFINE_list("rows", ["deq_transformer", "deq_trellisnet"], "DEQ rows of the WikiText-2 comparison.")
  flags.DEFINE_string("out", "results", "Folder for the PNG plots.")
  flags.DEFINE_integer("iters", 40, "Solver steps for the residual-against-iteration curves.")
  flags.DEFINE_integer("warm_segments", 8, "Test segments evaluated first, so the traced solve has memory.")
  flags.DEFINE_list("caps", ["1", "2", "4", "8", "12", "16", "24", "32"], "Forward caps for perplexity.")
  flags.DEFINE_integer("segments", 100, "Test segments (eval_batch_size x eval_tgt_len tokens each) per cap.")


SOLVERS = {
  "Broyden": deqjax.Broyden(),
  "Anderson (m = 5)": deqjax.Anderson(history=5),
  "fixed-point iteration": deqjax.Iteration(),
}


def residual_curves(rt, params, phase: str, iters: int, warm_segments: int) -> dict[str, np.ndarray]:
  """Per solver: `[iters + 1]` median relative residual ||f(z_k) - z_k|| / ||f(z_0) - z_0|| on one test segment."""
  rt = trainer.eval_runtime(rt)  # eval_mem_len, as the evaluation
  c = rt.config
  stream = OrderedLMStream(rt.task.data.splits["test"], c.eval_batch_size, c.eval_tgt_len)
  segments = stream.eval_segments()
  memory = trainer.init_memory(rt, params, c.eval_batch_size)
  warm = jax.jit(lambda p, m, x, y: trainer.model_forward(rt, p, x, y, m, key=None, phase=phase).memory)
  for _ in range(warm_segments):
    x, y = next(segments)
    memory = warm(params, memory, x, y)
  x, y = next(segments)
  curves = {}
  for name, solver in SOLVERS.items():
    forward = functools.partial(
      trainer.model_forward, rt, key=None, phase=phase, solver=solver, max_iter=iters, tol=0.0, rtol=0.0
    )
    out = jax.jit(lambda p, m, x, y, forward=forward: forward(p, x, y, m))(params, memory, x, y)
    trace = np.asarray(out.info.trace, np.float64)  # [batch, iters + 1]; -1 after a solve stopped early
    trace = np.where(trace < 0, np.nan, trace)
    curves[name] = np.nanmedian(trace / trace[:, :1], axis=0)
  return curves


def ppl_against_cap(rt, params, phase: str, caps: list[int], segments: int) -> list[float]:
  """Perplexity of the first `segments` test segments with the forward solve capped at each of `caps`."""
  first = rt.task.split_set("test", segments)
  return [
    trainer.evaluate_task(rt, params, phase, final=True, eval_set=first, max_iter=cap)["test_ppl"] for cap in caps
  ]


def main(argv):
  del argv
  caps = [int(cap) for cap in FLAGS.caps]
  curves, ppls = {}, {}
  for row in FLAGS.rows:
    config = load_config("wikitext2", row)
    rt, params, phase = trainer.restore_trained(config, workdir(FLAGS.root, "wikitext2", row))
    if phase != "deq":
      raise ValueError(f"The {row} checkpoint was last trained in phase {phase!r}; the analysis needs a DEQ.")
    curves[row] = residual_curves(rt, params, phase, FLAGS.iters, FLAGS.warm_segments)
    ppls[row] = ppl_against_cap(rt, params, phase, caps, FLAGS.segments)
    print(f"{NAMES[row]}: median relative residual after k steps")
    shown = [k for k in (0, 1, 2, 4, 8, 16, 24, 32, 40) if k <= FLAGS.iters]
    print("  " + f"{'solver':24s}" + "".join(f"{f'k={k}':>10s}" for k in shown))
    for name, curve in curves[row].items():
      print("  " + f"{name:24s}" + "".join(f"{curve[k]:10.2e}" for k in shown))
    print(f"{NAMES[row]}: test perplexity (first {FLAGS.segments} segments) against the forward cap")
    print("  " + "  ".join(f"cap {cap}: {ppl:.1f}" for cap, ppl in zip(caps, ppls[row], strict=True)))
  plot(curves, ppls, caps, FLAGS.out)


def plot(curves: dict, ppls: dict, caps: list[int], out: str) -> None:
  fig, axes = plots.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
  for ax, (row, by_solver) in zip(axes[0], curves.items(), strict=True):
    for name, curve in by_solver.items():
      ax.plot(np.arange(len(curve)), curve, label=name)
    ax.set(yscale="log", xlabel="solver step k", ylabel="||f(z_k) - z_k|| / ||f(z_0) - z_0||")
    ax.set_title(f"{NAMES[row]} (trained), one test segment", fontsize=10)
    ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save(fig, f"{out}/solver_residuals.png")
  fig, ax = plots.subplots(figsize=(5, 3.5))
  for row, values in ppls.items():
    ax.plot(caps, values, marker="o", label=NAMES[row])
  ax.set(xlabel="forward Broyden cap at evaluation", ylabel="test perplexity", yscale="log")
  ax.set_title("Perplexity against the solver cap at evaluation (trained with cap 24)", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save(fig, f"{out}/ppl_vs_cap.png")
  print(f"wrote {out}/solver_residuals.png and {out}/ppl_vs_cap.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)

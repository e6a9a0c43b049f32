r"""Where a copy-memory model's held-out loss comes from: which sequences, which recall positions.

    python -m experiments.analysis.copy_memory_errors \
      --config=experiments/configs/copy_memory/deq_transformer.py --workdir=<the run's workdir> \
      [--config.seed=2 ... the run's other overrides] [--split=valid] [--worst=10]

Restores the parameters `python -m experiments.main --mode=eval` tests (the workdir's latest checkpoint;
with test_params="best_valid" those best on validation, with ema_decay > 0 their average), evaluates
every sequence of the test set (`--split=valid`: the validation set) as the test does (the config's
evaluation cap for a DEQ), and prints
- the loss (the test's `test_loss`) and how the forward solves ended;
- the share of the loss carried by the 1, 3, 10 and 100 worst sequences;
- the mean loss at each of the ten recall positions and at the other positions;
- the sequences with a wrongly recalled digit: their digits, what the model recalled, their loss
  and their solve's relative residual; and the loss without them.

At losses near the 1e-4 target (about 42 nats over the 1,000 x 420 positions of the held-out set) one
confidently wrong digit (~9 nats) moves the figure by ~2e-5, so the loss of a model that is a
little unsure everywhere and that of one that is sure and wrong on two sequences look alike.
Single process (the evaluation's rows are gathered on the host).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from deqjax.data.copy_memory import N_COPY

FLAGS = flags.FLAGS
SHARES = (1, 3, 10, 100)


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  config_flags.DEFINE_config_file("config", None, "The run's config file (experiments/configs/copy_memory/*.py).")
  flags.DEFINE_string("workdir", None, "The run's workdir (its checkpoints).")
  flags.DEFINE_enum("split", "test", ["test", "valid"], "The held-out set to read: the test's or validation's.")
  flags.DEFINE_integer("worst", 10, "How many of the sequences with a wrong digit to list (all are counted).")
  flags.mark_flags_as_required(["config", "workdir"])


class Breakdown(NamedTuple):
  """Every held-out sequence's evaluation (N sequences of length L).

  nll: `[N, L]` float64, the loss at each position; digits / recalled: `[N, 10]` the sequence's digits and
  the recall positions' most likely symbols; rel_residual / converged: `[N]` its forward solve's relative
  residual and whether it converged (None for a model without solves).
  """

  nll: np.ndarray
  digits: np.ndarray
  recalled: np.ndarray
  rel_residual: np.ndarray | None
  converged: np.ndarray | None


def _outputs(rt, phase, params, memory, tokens, targets, **solver):
  from experiments.trainer.steps import model_forward

  out = model_forward(rt, params, tokens, targets, memory, key=None, phase=phase, **solver)
  recalled = out.logits[:, -N_COPY:].argmax(axis=-1)
  solves = () if out.info is None else (out.info.rel_residual, out.info.converged)
  return out.nll, recalled, solves


def sequence_breakdown(rt, params, phase: str, final: bool = True) -> Breakdown:
  """The `Breakdown` of the test set (`final`) or the validation set, evaluated as `evaluate_task` does."""
  import jax

  from experiments.trainer.runtime import to_global
  from experiments.trainer.steps import evaluation_solver, init_memory

  if rt.config.get("task") != "copy_memory":
    raise ValueError(f"config.task={rt.config.get('task')!r}: this breakdown reads copy-memory runs only.")
  if jax.process_count() > 1:
    raise ValueError(f"The breakdown runs in one process; this is one of {jax.process_count()}.")
  solver = evaluation_solver(rt, phase, {})
  forward = jax.jit(functools.partial(_outputs, rt, phase, **solver))
  eval_set = rt.task.eval_set(final)
  empty = init_memory(rt, params, eval_set.batch_size)
  parts = []
  for inputs, targets in eval_set.batches():
    x, y = (to_global(a, rt.batch_sharding, eval_set.batch_size) for a in (inputs, targets))
    nll, recalled, solves = jax.device_get(forward(params, empty, x, y))
    parts.append((nll.astype(np.float64), targets[:, -N_COPY:], recalled, *solves))
  columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
  nll, digits, recalled = columns[:3]
  rel_residual, converged = columns[3:] if len(columns) == 5 else (None, None)
  return Breakdown(nll, digits, recalled, rel_residual, converged)


def summarize(b: Breakdown) -> dict:
  """The breakdown's figures (losses are nats per position, as the test's `test_loss`):

  loss; recall_position_loss `[10]` and other_positions_loss; share_of_worst {k: share of the total loss in the
  k worst sequences}; wrong (indices of the sequences with a wrongly recalled digit, worst first), wrong_digits
  (their count) and loss_without_wrong; with solves, converged (share) and rel_residual_max.
  """
  per_sequence = b.nll.sum(axis=1)
  total = per_sequence.sum()
  order = np.argsort(-per_sequence, kind="stable")
  mistakes = b.recalled != b.digits
  wrong = [int(i) for i in order if mistakes[i].any()]
  kept = np.ones(len(per_sequence), bool)
  kept[wrong] = False
  summary = {
    "loss": total / b.nll.size,
    "recall_position_loss": b.nll[:, -N_COPY:].mean(axis=0),
    "other_positions_loss": b.nll[:, :-N_COPY].mean(),
    "share_of_worst": {k: per_sequence[order[:k]].sum() / total for k in SHARES if k <= len(order)},
    "wrong": wrong,
    "wrong_digits": int(mistakes.sum()),
    "loss_without_wrong": b.nll[kept].mean() if kept.any() else float("nan"),
  }
  if b.converged is not None:
    summary.update(converged=float(b.converged.mean()), rel_residual_max=float(b.rel_residual.max()))
  return summary


def report(b: Breakdown, summary: dict, worst: int, split: str) -> str:
  """The printed breakdown: the figures of `summary`, and up to `worst` of the sequences with a wrong digit."""
  n, length = b.nll.shape
  lines = [f"{split}: loss {summary['loss']:.4g} over {n} sequences of {length} positions"]
  if "converged" in summary:
    lines[0] += (
      f"; forward solves converged on {summary['converged']:.2%} of the sequences,"
      f" largest relative residual {summary['rel_residual_max']:.4g}"
    )
  shares = ", ".join(f"{k}: {share:.1%}" for k, share in summary["share_of_worst"].items())
  lines.append(f"share of the loss in the worst sequences: {shares}")
  by_position = " ".join(f"{value:.3g}" for value in summary["recall_position_loss"])
  lines.append(f"mean loss at recall positions 1-{N_COPY}: {by_position}; at the other positions: "
               f"{summary['other_positions_loss']:.3g}")  # fmt: skip
  wrong = summary["wrong"]
  rest = (
    "every sequence has one"
    if len(wrong) == n
    else f"the loss without those sequences: {summary['loss_without_wrong']:.4g}"
  )
  lines.append(f"wrong digits: {summary['wrong_digits']}, in {len(wrong)} sequences; {rest}")
  for i in wrong[:worst]:
    positions = [int(p) + 1 for p in np.nonzero(b.recalled[i] != b.digits[i])[0]]
    solve = "" if b.rel_residual is None else f", solve's relative residual {b.rel_residual[i]:.3g}"
    lines.append(
      f"  sequence {i}: {b.nll[i].sum():.3g} nats{solve}; digits {b.digits[i].tolist()}, recalled"
      f" {b.recalled[i].tolist()} (wrong at position {', '.join(map(str, positions))})"
    )
  if len(wrong) > worst:
    lines.append(f"  ... and {len(wrong) - worst} more (--worst)")
  return "\n".join(lines)


def main(argv):
  from experiments import trainer

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  try:
    rt, params, phase = trainer.restore_trained(FLAGS.config, FLAGS.workdir)
    breakdown = sequence_breakdown(rt, params, phase, final=FLAGS.split == "test")
  except (FileNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  print(report(breakdown, summarize(breakdown), FLAGS.worst, FLAGS.split), flush=True)


if __name__ == "__main__":
  from experiments.main import parse_flags

  define_flags()
  app.run(main, flags_parser=parse_flags)

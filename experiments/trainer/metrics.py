"""Training metrics: a progress line with ETA, TensorBoard event files and `metrics.jsonl` in the workdir."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np


@dataclasses.dataclass
class StepMetrics:
  step: int
  phase: str
  values: dict  # host scalars: loss, grad_norm, finite, and for DEQ steps f/b solver steps and residuals
  epoch: int
  nonfinite_total: int


class MetricsWriter:
  """Averages step metrics between flushes; only process 0 writes."""

  def __init__(
    self,
    workdir: str,
    num_steps: int,
    tokens_per_step: int,
    start_step: int = 0,
    warn_backward_failures=1.0,
    warn_eval_failures=1.0,
  ):
    """warn_backward_failures: a flush whose interval had more than this fraction of samples with a
    failed adjoint solve prints a warning line (1: never); warn_eval_failures: the same for an evaluation
    whose forward solves failed on more than this fraction of its samples."""
    self.num_steps, self.tokens_per_step = num_steps, tokens_per_step
    self.warn_backward_failures = warn_backward_failures
    self.warn_eval_failures = warn_eval_failures
    self.pending: list[StepMetrics] = []
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.main = jax.process_index() == 0
    self.jsonl = self.tensorboard = None
    if self.main:
      os.makedirs(workdir, exist_ok=True)
      _drop_records_after(os.path.join(workdir, "metrics.jsonl"), start_step)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter

      self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def add(self, metrics: StepMetrics) -> None:
    self.pending.append(metrics)

  def flush(self, step: int, **extra) -> dict:
    """Writes the averages since the last flush (plus `extra`), prints the progress line; returns the record."""
    if not self.pending:
      return {}
    now = time.perf_counter()
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    finite = [m for m in self.pending if m.values["finite"]]
    record = {"step": step, "phase": self.pending[-1].phase, "epoch": self.pending[-1].epoch}
    keys = sorted({k for m in finite for k in m.values if k != "finite"})
    for key in keys:
      record[key] = float(np.mean([m.values[key] for m in finite if key in m.values]))
    if "loss" in record:
      record["ppl"] = math.exp(min(record["loss"], 50.0))
    record["tokens_per_s"] = self.tokens_per_step / seconds_per_step
    record["s_per_step"] = seconds_per_step
    record["skipped"] = len(self.pending) - len(finite)
    record["nonfinite_total"] = self.pending[-1].nonfinite_total
    record.update(extra)
    self.pending, self.last_time, self.last_step = [], now, step
    if self.main:
      self.jsonl.write(json.dumps(record) + "\n")
      self.jsonl.flush()
      for key, value in record.items():
        if isinstance(value, float | int) and key != "step":
          self.tensorboard.add_scalar(f"train/{key}", value, step)
      print(_progress_line(record, self.num_steps, seconds_per_step), flush=True)
      failures = 1.0 - record.get("b_converged", 1.0)
      if failures > self.warn_backward_failures:
        print(
          f"WARNING: step {step}: the backward (adjoint) solve failed on {failures:.0%} of the samples since the last"
          f" line (warn_backward_failures={self.warn_backward_failures}; mean relative residual"
          f" {_residuals(record, 'b')} after {record['b_steps']:.1f} steps): these gradients are not implicit"
          ' gradients. See docs/training.md ("Keeping the equilibrium").',
          flush=True,
        )
    return record

  def scalars(self, step: int, values: dict) -> None:
    """Evaluation results (valid_ppl, test_ppl, heldout_loss, ..., the solves' figures): JSONL, TensorBoard and one
    printed line (`evaluation_lines`, with its warning)."""
    if not self.main:
      return
    self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self.jsonl.flush()
    for key, value in values.items():
      self.tensorboard.add_scalar(f"eval/{key}", value, step)
    print(evaluation_lines(f"step {step}", values, self.warn_eval_failures), flush=True)

  def close(self) -> None:
    if self.main:
      self.jsonl.close()
      self.tensorboard.close()


def evaluation_lines(label: str, values: dict, warn_eval_failures: float) -> str:
  """`label: key value, ...` for evaluation results, and a warning line when the evaluation's forward solves
  (`steps.solve_results`' figures) failed on more than `warn_eval_failures` of the samples."""
  text = f"{label}: " + ", ".join(f"{k} {v:.5g}" for k, v in values.items())
  prefix = next((p for p in ("eval_f_", "test_f_") if f"{p}converged" in values), None)
  failures = 1.0 - values[f"{prefix}converged"] if prefix else 0.0
  if failures > warn_eval_failures:
    text += (
      f"\nWARNING: {label}: the evaluation's forward solve did not converge on {100 * failures:.2g}% of the samples"
      f" (warn_eval_failures={warn_eval_failures}; relative residual mean {values[f'{prefix}residual']:.1e},"
      f" largest {values[f'{prefix}residual_max']:.1e}, after {values[f'{prefix}steps']:.1f} steps): the figures"
      ' above are not those of the equilibrium. See docs/training.md ("Keeping the equilibrium").'
    )
  return text


STEAL_SHOWN = 0.05  # the progress line names the hypervisor's share of the CPU time from this much on


def _progress_line(record: dict, num_steps: int, seconds_per_step: float) -> str:
  step = record["step"]
  eta = max(num_steps - step, 0) * seconds_per_step
  parts = [f"step {step}/{num_steps} [{record['phase']}]"]
  if "loss" in record:
    parts.append(f"loss {record['loss']:.4g} ppl {record['ppl']:.1f}")
  if "f_steps" in record:
    f_conv, b_conv = record.get("f_converged", float("nan")), record.get("b_converged", float("nan"))
    parts.append(f"solver f {record['f_steps']:.1f} steps (res {_residuals(record, 'f')}, {f_conv:.0%} conv)")
    parts.append(f"b {record['b_steps']:.1f} steps (res {_residuals(record, 'b')}, {b_conv:.0%} conv)")
  if "spectral_radius" in record:
    parts.append(f"rho {record['spectral_radius']:.2f} (max {record['spectral_radius_max']:.2f})")
  if "grad_norm" in record:
    parts.append(f"|g| {record['grad_norm']:.2f}")
  parts.append(f"{record['tokens_per_s']:.0f} tok/s")
  if record.get("host_steal", 0.0) >= STEAL_SHOWN:
    parts.append(f"host stole {record['host_steal']:.0%}")
  if record["skipped"]:
    parts.append(f"skipped {record['skipped']}")
  parts.append(f"ETA {_duration(eta)}")
  return " | ".join(parts)


def _residuals(record: dict, solve: str) -> str:
  """The mean relative residual of the forward ('f') or adjoint ('b') solve, '5.3e-03', followed by
  ', median 4.1e-04' where the step metrics carry the median (`steps.solver_metrics` does)."""
  mean, median = record[f"{solve}_residual"], record.get(f"{solve}_residual_median")
  return f"{mean:.1e}" if median is None else f"{mean:.1e}, median {median:.1e}"


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _drop_records_after(path: str, step: int) -> None:
  """Removes the records of steps after `step` (those a killed run logged after its last checkpoint)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
  if len(kept) != len(lines):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)

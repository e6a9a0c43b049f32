"""The training loop: train (resuming), validate, checkpoint, test; and evaluation of a trained workdir.

Everything a step depends on is a function of (seed, step) or lives in the checkpoint, so a run
killed at any moment and restarted ends with the same parameters.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from experiments.model_configs import architecture
from experiments.trainer.averaging import averaged_parameters
from experiments.trainer.checkpoints import Progress, checkpoint_manager, restore_newest_valid, save_checkpoint
from experiments.trainer.host_cpu import PROC_STAT, StealMeter
from experiments.trainer.metrics import MetricsWriter, StepMetrics, evaluation_lines
from experiments.trainer.runtime import Runtime, setup, to_global
from experiments.trainer.schedules import phase_at, train_max_iter, uses_correction, uses_jac_reg
from experiments.trainer.steps import evaluate_task, init_memory, train_step
from experiments.trainer.workdir import exclusive


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class Terminated(Exception):
  """SIGTERM arrived during the final evaluation (training itself was complete and saved)."""


class SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (main thread only).

  After `interrupt()`, a SIGTERM raises Terminated instead, to stop an evaluation at once.
  """

  def __init__(self):
    self.raised = False
    self.interrupting = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def interrupt(self) -> None:
    self.interrupting = True

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True
    if self.interrupting:
      raise Terminated

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def over_budget(config, progress: Progress) -> bool:
  """Whether the run has spent its training budget (`train_budget_seconds`; 0: unlimited).

  `train_budget_clock` "wall" counts the training steps' wall-clock time; "unstolen" the same less the
  share of it the hypervisor stole from this machine (`host_cpu`), so that a busy host does not shorten
  the run.
  """
  spent = progress.unstolen_seconds if config.train_budget_clock == "unstolen" else progress.train_seconds
  return 0 < config.train_budget_seconds <= spent


def _clocks(progress: Progress) -> dict:
  """The run's two clocks, for a metrics record."""
  return {"train_seconds": progress.train_seconds, "unstolen_seconds": progress.unstolen_seconds}


def _stolen_share(progress: Progress, flushed: tuple[float, float]) -> dict:
  """{"host_steal": the stolen share of the steps' wall time since the clocks read `flushed`}, or {} if none passed."""
  wall = progress.train_seconds - flushed[0]
  return {"host_steal": 1.0 - (progress.unstolen_seconds - flushed[1]) / wall} if wall > 0 else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming from `workdir`), validates every eval_every_steps, returns the task's test results.

  The workdir is locked for the run (a second run on it is refused). Returns None when SIGTERM
  stopped the run (after saving a checkpoint).
  """
  rt, params = setup(config)  # the whole config is checked before the workdir is touched
  if jax.process_index() != 0:  # one lock per workdir: process 0 holds it for all
    return _train_and_evaluate(rt, params, workdir)
  with exclusive(workdir):
    return _train_and_evaluate(rt, params, workdir)


def _train_and_evaluate(rt: Runtime, params, workdir: str) -> dict | None:
  c = rt.config
  opt_state = jax.jit(rt.optimizer.init, out_shardings=rt.replicated)(params)
  memory = init_memory(rt, params, c.batch_size)
  manager = checkpoint_manager(workdir, c.keep_checkpoints)
  progress, best_params = Progress(), None
  restored = restore_newest_valid(manager, rt, params, opt_state, memory)
  if restored is not None:
    progress, params, opt_state, memory, best_params = restored
    print(f"Resumed from {manager.directory} at step {progress.step}.", flush=True)
  selecting = c.test_params == "best_valid"
  if not selecting:  # a run resumed with test_params "last" keeps no best parameters
    progress.best_step, progress.best_valid, best_params = None, None, None
  writer = MetricsWriter(
    workdir, c.num_train_steps, rt.task.tokens_per_step, start_step=progress.step,
    warn_backward_failures=c.get("warn_backward_failures", 1.0), warn_eval_failures=c.get("warn_eval_failures", 1.0),
  )  # fmt: skip
  model_max_iter = getattr(architecture(c), "max_iter", None)
  consecutive = 0
  steal = StealMeter()
  if c.train_budget_clock == "unstolen" and not steal.available:
    print(f"Cannot read {PROC_STAT}: the budget counts wall-clock time (train_budget_clock='wall').", flush=True)
  flushed = (progress.train_seconds, progress.unstolen_seconds)
  with SigtermFlag() as sigterm:
    while progress.step < c.num_train_steps and not over_budget(c, progress):
      phase = phase_at(c, progress.step)
      inputs, targets = rt.task.train_batch(progress.step)
      steal.lap()
      started = time.perf_counter()
      x, y = (to_global(a, rt.batch_sharding, c.batch_size) for a in (inputs, targets))
      use_jac = uses_jac_reg(c, phase, progress.step)
      cap = train_max_iter(c, phase, progress.step, model_max_iter)
      every = c.get("spectral_radius_every", 0)
      use_radius = phase == "deq" and every > 0 and (progress.step + 1) % every == 0
      use_correction = uses_correction(c, phase, progress.step)
      update = rt.jitted(
        ("train", phase, use_jac, cap, use_radius, use_correction),
        functools.partial(
          train_step, rt, phase, use_jac=use_jac, max_iter=cap, use_radius=use_radius, use_correction=use_correction
        ),
        donate_argnums=(0, 1),
      )
      params, opt_state, memory, metrics = update(params, opt_state, memory, x, y, progress.step)
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - started
      stolen_share = steal.lap()
      progress.train_seconds += seconds
      progress.unstolen_seconds += seconds * (1.0 - (stolen_share or 0.0))
      progress.step += 1
      step = progress.step
      consecutive = 0 if metrics["finite"] else consecutive + 1
      progress.nonfinite_total += int(not metrics["finite"])
      if consecutive >= c.max_nonfinite_steps:
        raise NonFiniteError(
          f"{consecutive} consecutive steps (up to step {step}) had a non-finite loss or gradient and were skipped;"
          f" stopping. The last checkpoint ({manager.latest_step()}) holds the last good parameters."
        )
      writer.add(StepMetrics(step, phase, metrics, rt.task.epoch(step - 1), progress.nonfinite_total))
      last = step == c.num_train_steps or over_budget(c, progress)
      if step % c.log_every_steps == 0 or last:
        share = _stolen_share(progress, flushed) if steal.available else {}
        flushed = (progress.train_seconds, progress.unstolen_seconds)
        writer.flush(step, **_clocks(progress), **share)
      # Validation every eval_every_steps; at the last step only when it selects the parameters to test
      # (otherwise the test follows at once).
      if (c.eval_every_steps and step % c.eval_every_steps == 0 and not last) or (last and selecting):
        evaluated = evaluated_parameters(params, opt_state)
        results = evaluate_task(rt, evaluated, phase, final=False)
        writer.scalars(step, {**results, **_clocks(progress)})
        if selecting:
          best_params = keep_if_best(rt, progress, results, evaluated, best_params)
      if step % c.checkpoint_every_steps == 0 or last:
        save_checkpoint(manager, rt, progress, params, opt_state, memory, best_params)
      if sigterm.raised:
        if manager.latest_step() != step:
          save_checkpoint(manager, rt, progress, params, opt_state, memory, best_params)
        print(f"SIGTERM: saved the checkpoint at step {step} and stopped.", flush=True)
        writer.close()
        return None
    try:
      sigterm.interrupt()
      if sigterm.raised:  # arrived after the last step's check
        raise Terminated
      tested, tested_step = parameters_to_test(rt, progress, evaluated_parameters(params, opt_state), best_params)
      results = evaluate_task(rt, tested, phase_at(c, max(tested_step - 1, 0)), final=True)
      if selecting:
        results["test_params_step"] = tested_step
    except Terminated:
      print(
        f"SIGTERM during the final test: training is complete and saved at step {progress.step}; run the same"
        " command again to test it (or --mode=eval).",
        flush=True,
      )
      writer.close()
      return None
  writer.scalars(progress.step, {**results, **_clocks(progress)})
  writer.close()
  return results


def evaluated_parameters(params, opt_state):
  """The parameters that validation and the test read: the moving average the optimizer keeps when ema_decay > 0
  (`averaging.average_parameters`), else `params`."""
  average = averaged_parameters(opt_state)
  return params if average is None else average


def keep_if_best(rt: Runtime, progress: Progress, results: dict, params, best_params):
  """The parameters to keep for test_params="best_valid": a copy of `params` (of step `progress.step`) when their
  validation score `results[task.selection_name]` is the lowest so far (`progress` then records it), else
  `best_params`. A non-finite score never counts as best."""
  value = results[rt.task.selection_name]
  if not math.isfinite(value) or (progress.best_valid is not None and value >= progress.best_valid):
    return best_params
  progress.best_step, progress.best_valid = progress.step, float(value)
  # A copy: the training step donates `params`' buffers.
  return rt.jitted(("copy_params",), lambda tree: jax.tree.map(jnp.copy, tree))(params)


def parameters_to_test(rt: Runtime, progress: Progress, params, best_params) -> tuple:
  """(parameters to test, the step they are from): with test_params="best_valid" those that scored best on
  validation (the last ones if no validation has run), else the last ones (`params`: with ema_decay > 0, the
  parameters' average, as validation read them)."""
  which = "the parameters' average" if rt.config.get("ema_decay", 0.0) > 0 else "the parameters"
  if rt.config.test_params == "best_valid" and best_params is not None:
    print(
      f"Testing {which} of step {progress.best_step}, the best on validation"
      f" ({rt.task.selection_name}={progress.best_valid:.6g}); the run ended at step {progress.step}.",
      flush=True,
    )
    return best_params, progress.best_step
  if rt.config.test_params == "best_valid":
    print(f"No validation has selected parameters: testing those of step {progress.step}, the last.", flush=True)
  return params, progress.step


def restore_trained(config: ml_collections.ConfigDict, workdir: str) -> tuple[Runtime, nnx.State, str]:
  """(runtime, the parameters to test from the workdir's latest checkpoint, the phase they were trained in last).

  With test_params="best_valid", the parameters are those the run kept as best on validation; with ema_decay > 0,
  the parameters' average (the run's validations read it too)."""
  rt, params = setup(config)
  opt_state = jax.eval_shape(rt.optimizer.init, params)
  opt_state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rt.replicated), opt_state)
  checkpoints = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(checkpoints):
    raise FileNotFoundError(f"No checkpoints under --workdir={workdir} ({checkpoints} does not exist); train first.")
  manager = checkpoint_manager(workdir, rt.config.keep_checkpoints, create=False)
  memory = init_memory(rt, params, rt.config.batch_size)
  restored = restore_newest_valid(manager, rt, params, opt_state, memory, training=False)
  if restored is None:
    raise FileNotFoundError(f"No readable checkpoint under {checkpoints}; train first (--mode=train).")
  last = evaluated_parameters(restored.params, restored.opt_state)
  params, step = parameters_to_test(rt, restored.progress, last, restored.best_params)
  phase = phase_at(rt.config, max(step - 1, 0))
  print(f"Checkpoint of step {restored.progress.step}: testing step {step}'s parameters, phase {phase!r}.", flush=True)
  return rt, params, phase


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The task's test results for the workdir's latest checkpoint (LM: eval_tgt_len, eval_mem_len apply)."""
  rt, params, phase = restore_trained(config, workdir)
  results = evaluate_task(rt, params, phase, final=True)
  if jax.process_index() == 0:
    print(evaluation_lines("test", results, rt.config.get("warn_eval_failures", 1.0)), flush=True)
  return results

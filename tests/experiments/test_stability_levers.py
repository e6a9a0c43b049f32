"""The levers that keep a DEQ at its equilibrium in training, each shown to change the update as specified,
and the solver monitoring (convergence rates, the failed-adjoint warning)."""

import io
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_training import DIFFERENT, SAME, changes_update, max_difference, one_update, tiny_config

import deqjax
from deqjax import Status
from experiments import trainer
from experiments.trainer import schedules, steps
from experiments.trainer.metrics import MetricsWriter, StepMetrics


def test_stochastic_jacobian_penalty(tfds_dir):
  # With jac_reg_prob p a DEQ step carries the penalty with probability p, drawn from (seed, step):
  # the same steps on every call (a resumed run makes the same choices), another seed other steps.
  config = tiny_config(tfds_dir, jac_reg=5.0, jac_reg_prob=0.35)
  chosen = [s for s in range(2000) if trainer.uses_jac_reg(config, "deq", s)]
  assert 0.35 * 2000 - 4 * 21.3 < len(chosen) < 0.35 * 2000 + 4 * 21.3  # binomial sd sqrt(2000 p (1 - p)) = 21.3
  assert chosen == [s for s in range(2000) if trainer.uses_jac_reg(config, "deq", s)]
  other_seed = tiny_config(tfds_dir, jac_reg=5.0, jac_reg_prob=0.35, seed=1)
  assert chosen != [s for s in range(2000) if trainer.uses_jac_reg(other_seed, "deq", s)]
  assert all(trainer.uses_jac_reg(tiny_config(tfds_dir, jac_reg=5.0), "deq", s) for s in range(50))
  # A step without the draw is the plain update; one with it is the penalised update of jac_reg_prob = 1.
  with_draw, without_draw = chosen[0], next(s for s in range(2000) if s not in chosen)
  plain, _ = one_update(tfds_dir, without_draw)
  skipped, metrics = one_update(tfds_dir, without_draw, jac_reg=5.0, jac_reg_prob=0.35)
  assert "jac_loss" not in metrics and max_difference(skipped, plain) < SAME
  drawn, metrics = one_update(tfds_dir, with_draw, jac_reg=5.0, jac_reg_prob=0.35)
  always, _ = one_update(tfds_dir, with_draw, jac_reg=5.0)
  assert max_difference(drawn, always) < SAME and max_difference(drawn, plain) > DIFFERENT
  # Logged per sample: the mean the loss adds and the largest sample's value.
  assert 0.0 < float(metrics["jac_loss"]) <= float(metrics["jac_loss_max"]) < 10.0
  with pytest.raises(ValueError, match=r"jac_reg_prob=0"):
    trainer.check_config(tiny_config(tfds_dir, jac_reg_prob=0.0))


def test_random_forward_cap_in_training(tfds_dir):
  # train_max_iter_delta d: a DEQ step's forward cap is max_iter - U{0..d}, fixed by (seed, step); the
  # update at a step with cap c is the update of a model whose max_iter is c. Unrolled steps: none.
  config = tiny_config(tfds_dir, train_max_iter_delta=3)  # the tiny model's max_iter is 8
  caps = [schedules.train_max_iter(config, "deq", s, 8) for s in range(400)]
  assert set(caps) == {5, 6, 7, 8} and all(caps.count(c) > 60 for c in (5, 6, 7, 8))
  assert caps == [schedules.train_max_iter(config, "deq", s, 8) for s in range(400)]
  assert schedules.train_max_iter(config, "pretrain", 0, 8) is None
  assert schedules.train_max_iter(tiny_config(tfds_dir), "deq", 0, 8) is None
  strict = dict(rtol=1e-9)  # no sample converges: every solve runs to its cap
  capped, metrics = one_update(tfds_dir, 0, model=strict, max_iter=2)
  assert float(metrics["f_steps"]) == 2.0
  as_model, _ = one_update(tfds_dir, 0, model=dict(strict, max_iter=2))
  full, _ = one_update(tfds_dir, 0, model=strict)
  assert max_difference(capped, as_model) < SAME and max_difference(capped, full) > DIFFERENT
  for fields, error in [
    (dict(train_max_iter_delta=8), r"train_max_iter_delta=8: must be below config.model.max_iter=8"),
    (dict(train_max_iter_delta=2, execution="unrolled"), r"train_max_iter_delta=2: a DEQ solver setting"),
    (dict(eval_max_iter=-1), r"eval_max_iter=-1"),
  ]:
    with pytest.raises(ValueError, match=error):
      trainer.check_config(tiny_config(tfds_dir, **fields))


def test_failed_adjoint_policies_in_training(tfds_dir):
  # One adjoint step at a float32-unreachable tolerance: every sample's adjoint fails. "drop" then
  # removes the gradient through z*, "phantom" with one undamped step is exactly backward="phantom".
  failing = dict(backward_max_iter=1, backward_rtol=1e-9)
  kept, metrics = one_update(tfds_dir, 0, model=failing)
  assert float(metrics["b_converged"]) == 0.0 and float(metrics["converged"]) == 0.0
  dropped, metrics = one_update(tfds_dir, 0, model=dict(failing, backward_failure="drop"))
  assert float(metrics["b_converged"]) == 0.0  # counted whatever the policy
  phantom, _ = one_update(tfds_dir, 0, model=dict(failing, backward_failure="phantom"))
  one_step, _ = one_update(tfds_dir, 0, model=dict(failing, backward="phantom"))
  assert max_difference(phantom, one_step) < SAME
  assert min(max_difference(dropped, kept), max_difference(phantom, kept), max_difference(dropped, phantom)) > DIFFERENT
  # (That converged samples keep their adjoint under every policy: tests/core/test_backward_failure.py.)
  with pytest.raises(ValueError, match=r"backward_failure='skip'"):
    trainer.check_config(tiny_config(tfds_dir, model=dict(backward_failure="skip")))


def test_stall_detection_reaches_the_solves(tfds_dir):
  strict = dict(rtol=1e-9, backward_rtol=1e-9)
  _, capped = one_update(tfds_dir, 0, model=strict)
  _, stalled = one_update(tfds_dir, 0, model=dict(strict, stall_window=1, stall_margin=0.9))
  assert float(capped["f_steps"]) == 8.0 and float(stalled["f_steps"]) < 8.0
  assert float(stalled["b_steps"]) < float(capped["b_steps"])
  assert not changes_update(tfds_dir, "deq", model=dict(stall_window=100))  # never triggers: the same solve
  for model, error in [(dict(stall_window=-1), "stall_window"), (dict(stall_margin=1.0), "stall_margin=1.0")]:
    with pytest.raises(ValueError, match=error):
      trainer.check_config(tiny_config(tfds_dir, model=model))


def test_fixed_point_correction_enters_the_loss_with_its_weight(tfds_dir):
  # loss = nll + w * mean(correction_nll): the update is affine in w (SGD at rate 1), and w = 0 with the
  # same kept iterates is the plain update; each kept iterate's loss is logged.
  steps = dict(correction_steps=(1, 4))
  plain, _ = one_update(tfds_dir, 0)
  half, metrics = one_update(tfds_dir, 0, model=steps, correction_weight=0.5)
  full, _ = one_update(tfds_dir, 0, model=steps, correction_weight=1.0)
  first, second = [h - p for h, p in zip(half, plain, strict=True)], [f - h for f, h in zip(full, half, strict=True)]
  assert max_difference(second, first) < SAME and max_difference(half, plain) > DIFFERENT
  assert 8.0 < float(metrics["correction_loss_0"]) < 11.0 and 8.0 < float(metrics["correction_loss_1"]) < 11.0
  for fields, model, error in [
    (dict(correction_weight=0.5), None, r"correction_weight=0.5 with config.model.correction_steps=\(\)"),
    ({}, steps, r"correction_weight=0.0 with config.model.correction_steps=\(1, 4\)"),
    (dict(correction_weight=1.0, train_max_iter_delta=5), steps, r"as low as max_iter - train_max_iter_delta = 3"),
  ]:
    with pytest.raises(ValueError, match=error):
      trainer.check_config(tiny_config(tfds_dir, model=model, **fields))


def test_fixed_point_correction_stops_at_correction_until_step(tfds_dir):
  # Before correction_until_step = 3 the update is the always-correcting one; from it on, the plain one.
  steps = dict(correction_steps=(1, 4))
  fields = dict(correction_weight=0.5, correction_until_step=3)
  for step, correcting in ((2, True), (3, False)):
    scheduled, metrics = one_update(tfds_dir, step, model=steps, **fields)
    reference, _ = (
      one_update(tfds_dir, step, model=steps, correction_weight=0.5) if correcting else one_update(tfds_dir, step)
    )
    assert max_difference(scheduled, reference) < SAME
    assert ("correction_loss_0" in metrics) == correcting
  config = tiny_config(tfds_dir, model=steps, **fields)
  assert [trainer.uses_correction(config, "deq", s) for s in (0, 2, 3, 50)] == [True, True, False, False]
  assert not trainer.uses_correction(config, "pretrain", 0)
  config.correction_until_step = 0
  assert trainer.uses_correction(config, "deq", 10**6)
  with pytest.raises(ValueError, match=r"correction_until_step=3 with config.model.correction_steps=\(\)"):
    trainer.check_config(tiny_config(tfds_dir, correction_until_step=3))
  with pytest.raises(ValueError, match=r"correction_until_step=-1"):
    trainer.check_config(tiny_config(tfds_dir, model=steps, correction_weight=0.5, correction_until_step=-1))


def test_spectral_radius_monitoring_leaves_the_update_alone(tfds_dir):
  # Two steps each way: few enough that rounding differences between the two programs stay at rounding level.
  few = dict(max_iter=2, backward_max_iter=2)
  plain, plain_metrics = one_update(tfds_dir, 0, model=few)
  monitored, metrics = one_update(tfds_dir, 0, model=few, use_radius=True)
  assert "spectral_radius" not in plain_metrics and max_difference(monitored, plain) < SAME
  # One estimate per sample at the returned state: their mean, at most their largest.
  assert 0.1 < float(metrics["spectral_radius"]) <= float(metrics["spectral_radius_max"]) < 10.0
  config = tiny_config(tfds_dir, spectral_radius_every=25)
  assert trainer.check_config(config) is None
  with pytest.raises(ValueError, match=r"spectral_radius_every=25: a DEQ solver setting"):
    trainer.check_config(tiny_config(tfds_dir, spectral_radius_every=25, execution="unrolled"))


def test_solver_metrics_count_converged_samples_and_steps():
  info = deqjax.SolveInfo(
    nstep=jnp.array([3, 8, 5, 8]),
    residual=jnp.zeros(4),
    rel_residual=jnp.array([1e-4, 2e-2, 5e-4, 3e-2]),
    converged=jnp.array([True, False, True, False]),
    status=jnp.array([Status.CONVERGED, Status.MAX_STEPS, Status.CONVERGED, Status.STALLED]),
    trace=jnp.zeros((4, 9)),
  )
  backward = deqjax.BackwardStats(
    nstep=jnp.array([2.0, 8.0, 3.0, 4.0]),
    residual=jnp.zeros(4),
    rel_residual=jnp.array([1e-4, 1e-1, 1e-4, 2e-4]),
    converged=jnp.array([1.0, 0.0, 1.0, 1.0]),
    status=jnp.array([Status.CONVERGED, Status.MAX_STEPS, Status.CONVERGED, Status.CONVERGED], jnp.float32),
  )
  m = {k: float(v) for k, v in steps.solver_metrics(info, backward).items()}
  assert m["f_converged"] == 0.5 and m["b_converged"] == 0.75 and m["converged"] == 0.0
  assert m["f_steps"] == 6.0 and m["b_steps"] == 4.25
  # Means and medians (of an even count: the mean of the middle two) of the relative residuals.
  np.testing.assert_allclose([m["f_residual"], m["f_residual_median"]], [0.01265, 0.01025], rtol=1e-6)
  np.testing.assert_allclose([m["b_residual"], m["b_residual_median"]], [0.0251, 1.5e-4], rtol=1e-6)
  all_ok = info._replace(converged=jnp.ones(4, bool), status=jnp.zeros(4, jnp.int32))
  assert float(steps.solver_metrics(all_ok, backward._replace(status=jnp.zeros(4)))["converged"]) == 1.0


def _flush(tmp_path, b_converged, threshold, b_residual_median=None):
  out = io.StringIO()
  sys_stdout, sys.stdout = sys.stdout, out
  try:
    writer = MetricsWriter(str(tmp_path), 100, 64, warn_backward_failures=threshold)
    for step, b in enumerate(b_converged, start=1):
      values = dict(loss=5.0, grad_norm=1.0, finite=True, f_steps=4.0, f_residual=1e-4, b_steps=3.0, b_residual=1e-3)
      values.update(f_converged=1.0, b_converged=b, converged=float(b == 1.0))
      if b_residual_median is not None:
        values.update(f_residual_median=5e-5, b_residual_median=b_residual_median * step)
      writer.add(StepMetrics(step, "deq", values, 0, 0))
    record = writer.flush(len(b_converged))
    writer.close()
  finally:
    sys.stdout = sys_stdout
  return record, out.getvalue()


def test_progress_line_rates_and_the_failed_adjoint_warning(tmp_path):
  # Four steps with 100 %, 75 %, 50 %, 75 % of the adjoints converged: 75 % over the interval, and one
  # step in four converged throughout.
  record, printed = _flush(tmp_path / "a", [1.0, 0.75, 0.5, 0.75], threshold=0.2)
  assert record["b_converged"] == 0.75 and record["converged"] == 0.25
  assert "100% conv" in printed and "75% conv" in printed
  assert "WARNING: step 4: the backward (adjoint) solve failed on 25% of the samples" in printed
  assert json.loads(open(tmp_path / "a" / "metrics.jsonl").readline())["converged"] == 0.25
  assert "(res 1.0e-04, 100% conv)" in printed and "mean relative residual 1.0e-03 after 3.0 steps" in printed
  _, printed = _flush(tmp_path / "b", [1.0, 0.75, 0.5, 0.75], threshold=0.25)
  assert "WARNING" not in printed
  # With the medians (their mean over the interval: 2e-4 x (1 + 2 + 3 + 4) / 4 = 5e-4) beside the means.
  record, printed = _flush(tmp_path / "c", [1.0, 0.75, 0.5, 0.75], threshold=0.2, b_residual_median=2e-4)
  assert np.isclose(record["b_residual_median"], 5e-4)
  assert "(res 1.0e-04, median 5.0e-05, 100% conv)" in printed and "(res 1.0e-03, median 5.0e-04, 75% conv)" in printed
  assert "mean relative residual 1.0e-03, median 5.0e-04 after 3.0 steps" in printed
  assert np.isclose(1.0 - record["b_converged"], 0.25)


def _info(nstep, rel_residual, converged):
  n = len(nstep)
  return deqjax.SolveInfo(
    nstep=jnp.array(nstep),
    residual=jnp.zeros(n),
    rel_residual=jnp.array(rel_residual),
    converged=jnp.array(converged),
    status=jnp.where(jnp.array(converged), Status.CONVERGED, Status.MAX_STEPS),
    trace=jnp.zeros((n, 13)),
  )


def test_evaluation_solve_figures_over_batches():
  # Two batches: 2 of 3 and 1 of 2 samples converged; steps and residuals averaged over the 5 samples, the largest
  # residual over both batches.
  first = steps.solve_sums(_info([4, 12, 6], [5e-4, 3e-2, 8e-4], [True, False, True]))
  second = steps.solve_sums(_info([12, 7], [2e-3, 9e-4], [False, True]))
  totals = {k: (max if k.endswith("_max") else sum)((float(first[k]), float(second[k]))) for k in first}
  test = steps.solve_results(totals, final=True)
  assert test.keys() == {"test_f_converged", "test_f_steps", "test_f_residual", "test_f_residual_max"}
  assert test["test_f_converged"] == 0.6 and test["test_f_steps"] == 41 / 5
  np.testing.assert_allclose([test["test_f_residual"], test["test_f_residual_max"]], [0.0342 / 5, 3e-2], rtol=1e-6)
  assert steps.solve_results(totals, final=False)["eval_f_converged"] == 0.6
  assert steps.solve_results({"nll": 1.0}, final=False) == {}  # a model without solves


def _scalars(tmp_path, values, threshold):
  out = io.StringIO()
  sys_stdout, sys.stdout = sys.stdout, out
  try:
    writer = MetricsWriter(str(tmp_path), 100, 64, warn_eval_failures=threshold)
    writer.scalars(200, values)
    writer.close()
  finally:
    sys.stdout = sys_stdout
  return out.getvalue()


def test_evaluation_warns_when_its_forward_solves_failed(tmp_path):
  solves = dict(eval_f_converged=0.75, eval_f_steps=10.5, eval_f_residual=2e-3, eval_f_residual_max=9e-3)
  values = dict(heldout_loss=1e-4, **solves)
  printed = _scalars(tmp_path / "a", values, threshold=0.2)
  assert "step 200: heldout_loss 0.0001, eval_f_converged 0.75, eval_f_steps 10.5" in printed
  assert (
    "WARNING: step 200: the evaluation's forward solve did not converge on 25% of the samples (warn_eval_failures=0.2;"
    " relative residual mean 2.0e-03, largest 9.0e-03, after 10.5 steps)" in printed
  )
  assert "WARNING" not in _scalars(tmp_path / "b", values, threshold=0.25)
  final = {"test_loss": 1e-4, **{k.replace("eval_", "test_"): v for k, v in solves.items()}}
  warning = "WARNING: step 200: the evaluation's forward solve did not converge on 25%"
  assert warning in _scalars(tmp_path / "c", final, 0.0)
  all_converged = {**values, "eval_f_converged": 1.0}
  assert "WARNING" not in _scalars(tmp_path / "d", all_converged, threshold=0.0)
  assert "WARNING" not in _scalars(tmp_path / "e", {"valid_ppl": 300.0}, threshold=0.0)  # no solves, nothing to say
  # A share under 1 % is written with two significant digits (1 sample in 4,000), not rounded to "0%".
  few = {**values, "eval_f_converged": 0.99975}
  assert "did not converge on 0.025% of the samples" in _scalars(tmp_path / "f", few, threshold=0.0)
  assert "WARNING" not in _scalars(tmp_path / "g", few, threshold=0.01)

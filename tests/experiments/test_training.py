"""End-to-end training on the bundled WikiText-2 sample: learning, exact resume, devices, bad inputs."""

import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags
from paths import REPO, SUBPROCESS_XLA_FLAGS
from tiny_training import (
  DIFFERENT,
  SAME,
  SHARED_RUN,
  TINY,
  TINY_MODEL,
  changes_update,
  copy_workdir,
  main_command,
  max_difference,
  one_update,
  plain_update,
  tiny_config,
  tiny_text,
)

from deqjax.data import OrderedLMStream
from experiments import trainer
from experiments.trainer import loop, schedules, steps
from experiments.trainer.runtime import to_global

DEFAULT_CONFIG = os.path.join(REPO, "experiments", "configs", "default.py")


def test_training_lowers_the_loss(trained):
  config, workdir, test_ppl, printed = trained
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 5
  assert losses[-1] < losses[0] - 1.0  # ln(13,777) = 9.53 at the start
  assert test_ppl < np.exp(losses[0])
  assert "f_steps" in records[-2] and "b_steps" in records[-2]  # DEQ steps report both solves
  assert records[-1]["test_ppl"] == test_ppl
  assert os.path.isdir(workdir / "tensorboard") and os.listdir(workdir / "tensorboard")
  assert "step 50/50 [deq]" in printed


def test_switched_off_jacobian_penalty_is_not_computed(trained):
  # Unrolled steps (1-20) have no penalty (pretrain_jac_reg 0); DEQ steps 21-40 carry it; from
  # jac_reg_until_step = 40 on its weight is 0 and the loop's update (compiled for that phase)
  # no longer computes it. Each record averages the 10 steps before it.
  _, workdir, _, _ = trained
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  jac = {r["step"]: r.get("jac_loss") for r in records if "loss" in r}
  assert sorted(jac) == [10, 20, 30, 40, 50]
  assert jac[10] is None and jac[20] is None and jac[30] > 0 and jac[40] > 0 and jac[50] is None


def test_evaluation_of_the_trained_workdir(trained):
  # --mode=eval on the latest checkpoint reproduces the run's test perplexity and the figures of its forward
  # solves exactly; a longer evaluation memory changes it (the model sees more context).
  config, workdir, test_ppl, _ = trained
  config = config.copy_and_resolve_references()
  results = trainer.evaluate(config, str(workdir))
  final = json.loads(open(workdir / "metrics.jsonl").readlines()[-1])
  solves = ("test_f_converged", "test_f_steps", "test_f_residual", "test_f_residual_max")
  assert results == {"test_ppl": test_ppl, **{key: final[key] for key in solves}}
  assert 0 <= results["test_f_converged"] <= 1 and 1 <= results["test_f_steps"] <= config.model.max_iter
  assert 0 < results["test_f_residual"] <= results["test_f_residual_max"]
  config.eval_mem_len = 48
  longer = trainer.evaluate(config, str(workdir))["test_ppl"]
  assert longer != test_ppl and abs(np.log(longer / test_ppl)) < 0.2
  _check_solver_overrides_at_evaluation(config, workdir, test_ppl)


def _check_solver_overrides_at_evaluation(config, workdir, test_ppl):
  from experiments.analysis import solver_analysis

  config.eval_mem_len = -1
  rt, params, phase = trainer.restore_trained(config, str(workdir))
  assert phase == "deq"
  # The config's own cap passed as an override is the same evaluation; a cap of 1 step is a different one.
  test = lambda **solver: trainer.evaluate_task(rt, params, phase, final=True, **solver)["test_ppl"]
  assert test(max_iter=config.model.max_iter) == test_ppl
  assert test(max_iter=1) != test_ppl
  _check_solve_figures_against_the_model(rt, params, phase)
  # eval_max_iter: evaluation's own cap, apart from training's (an explicit override still wins).
  capped = config.copy_and_resolve_references()
  capped.eval_max_iter = 1
  capped_rt = dataclasses.replace(rt, config=capped, cache={})
  assert trainer.evaluate_task(capped_rt, params, phase, final=True)["test_ppl"] == test(max_iter=1)
  assert (
    trainer.evaluate_task(capped_rt, params, phase, final=True, max_iter=config.model.max_iter)["test_ppl"] == test_ppl
  )
  assert solver_analysis.ppl_against_cap(rt, params, phase, [config.model.max_iter], 0) == [test_ppl]
  curves = solver_analysis.residual_curves(rt, params, phase, iters=6, warm_segments=1)
  for name, curve in curves.items():
    assert curve.shape == (7,) and curve[0] == 1.0, name  # relative to the initial residual
  assert curves["Broyden"][-1] < 0.5  # six quasi-Newton steps at least halve the residual


def _check_solve_figures_against_the_model(rt, params, phase):
  # The evaluation's solve figures over one batch are those of the model's own SolveInfo for that batch; with a cap
  # of one step every sample takes exactly that step, unconverged, at a larger residual.
  everything = rt.task.eval_set(True)
  first = next(everything.batches())
  one_batch = dataclasses.replace(everything, batches=lambda: iter([first]))
  eval_rt = steps.eval_runtime(rt)
  x, y = (to_global(a, rt.batch_sharding, one_batch.batch_size) for a in first)
  memory = steps.init_memory(eval_rt, params, one_batch.batch_size)
  info = steps.model_forward(eval_rt, params, x, y, memory, key=None, phase=phase).info
  results = trainer.evaluate_task(rt, params, phase, final=True, eval_set=one_batch)
  rel = np.asarray(info.rel_residual, np.float64)
  assert results["test_f_converged"] == np.mean(np.asarray(info.converged))
  assert results["test_f_steps"] == np.mean(info.nstep)
  # Outside the compiled evaluation step, f(z) - z rounds differently: float32's 1.2e-7 relative to ||z|| is ~2e-4
  # relative to a residual of ~7e-4 ||z||.
  figures = [results["test_f_residual"], results["test_f_residual_max"]]
  np.testing.assert_allclose(figures, [rel.mean(), rel.max()], rtol=2e-4)
  one_step = trainer.evaluate_task(rt, params, phase, final=True, eval_set=one_batch, max_iter=1)
  assert one_step["test_f_steps"] == 1.0 and one_step["test_f_converged"] == 0.0
  assert one_step["test_f_residual"] > results["test_f_residual"]


def test_wall_clock_budget_stops_training_then_tests(tfds_dir, tmp_path):
  # Any positive budget below one step's time: the run stops after its first step, saves, and tests.
  config = tiny_config(tfds_dir, num_train_steps=50, pretrain_steps=0, train_budget_seconds=1e-6, eval_every_steps=0)
  test_ppl = trainer.train_and_evaluate(config, str(tmp_path))["test_ppl"]
  assert ocp.CheckpointManager(str(tmp_path / "checkpoints")).latest_step() == 1
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 1]  # the flushed step, then the test result
  assert records[-1]["test_ppl"] == test_ppl and records[-1]["train_seconds"] > 0
  assert trainer.train_and_evaluate(config, str(tmp_path))["test_ppl"] == test_ppl  # resuming: nothing left to train
  with pytest.raises(trainer.ConfigError, match=r"config.train_budget_seconds=-1.0: must be a number >= 0"):
    trainer.setup(tiny_config(tfds_dir, train_budget_seconds=-1.0))


def _run_main(workdir, tfds_dir, *extra):
  fields = {**TINY, **{f"model.{k}": v for k, v in TINY_MODEL.items()}}
  fields.update({"data.data_dir": tfds_dir, "data.manual_dir": tiny_text(tfds_dir)})
  fields.update(num_train_steps=12, pretrain_steps=4, checkpoint_every_steps=3, eval_every_steps=0)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": SUBPROCESS_XLA_FLAGS}
  command = main_command(workdir, fields, *extra)
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return jax.tree.leaves(state["params"]), jax.tree.leaves(state["opt_state"])


def _run_shared_config(workdir, config):
  """`experiments.main` on the shared run's config, with this process's JAX settings (x64, four devices),
  so that it compiles (or finds in the compilation cache) the shared run's very programs."""
  fields = {**TINY, **SHARED_RUN, **{f"model.{k}": v for k, v in TINY_MODEL.items()}}
  fields.update({"data.data_dir": config.data.data_dir, "data.manual_dir": config.data.manual_dir})
  command = main_command(workdir, fields)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}  # XLA_FLAGS: this process's
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_resume_is_bitwise_identical(trained, tmp_path):
  # The shared run, killed as soon as its checkpoint at step 25 starts to be written (most often
  # inside orbax's write, sometimes just after it) and started again, ends exactly as the
  # undisturbed shared run did: the same test_ppl to the last digit, the same parameters and
  # optimizer state. Resuming reads checkpoint 25 if its write completed, else starts over.
  config, workdir, test_ppl, _ = trained
  killed = _run_shared_config(tmp_path, config)
  checkpoints = tmp_path / "checkpoints"
  deadline = time.time() + 240
  while not (checkpoints.is_dir() and any(p.name.startswith("25") for p in checkpoints.iterdir())):
    assert killed.poll() is None and time.time() < deadline, "the run ended before its checkpoint at step 25"
    time.sleep(0.002)
  killed.send_signal(signal.SIGKILL)  # mid-run: while or after writing the checkpoint at step 25, before step 50
  killed.communicate()
  assert not (checkpoints / "50").exists()
  written = (checkpoints / "25").is_dir()  # finalised before the kill; else only orbax's temporary folder
  print(f"killed {'after' if written else 'inside'} the write of checkpoint 25: {sorted(os.listdir(checkpoints))}")
  resumed = _run_shared_config(tmp_path, config)
  out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, out
  assert ("Resumed from" in out) == written, out
  name, value = out.strip().splitlines()[-1].split("=")
  assert name == "test_ppl" and float(value) == test_ppl  # a plain float, printed in full: the same number
  for a, b in zip(_final_params(tmp_path, 50), _final_params(workdir, 50), strict=True):
    for x, y in zip(a, b, strict=True):
      np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_exits_cleanly(tfds_dir, tmp_path):
  run = _run_main(tmp_path, tfds_dir, "--config.num_train_steps=100000")
  deadline = time.time() + 240
  while not (tmp_path / "checkpoints").is_dir() or not any((tmp_path / "checkpoints").iterdir()):
    assert run.poll() is None and time.time() < deadline
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 0, out
  saved = int(out.split("saved the checkpoint at step ")[1].split()[0])
  assert ocp.CheckpointManager(str(tmp_path / "checkpoints")).latest_step() == saved


@pytest.mark.parametrize(
  "arguments, error",
  [
    (
      ["--config.model.n_layerz=3"],
      "FATAL Flags parsing error: --config.model.n_layerz: the config has no field 'model.n_layerz'; the fields"
      " there are ['attention_chunks', 'backward', 'backward_failure'",
    ),
    (
      ["--config.learning_rat=1"],
      "FATAL Flags parsing error: --config.learning_rat: the config has no field 'learning_rat'; the fields there"
      " are ['batch_size', 'checkpoint_every_steps'",
    ),
    (
      ["--config.seed.x=1"],
      "FATAL Flags parsing error: --config.seed.x: the config has no field 'seed.x'; 'seed' is a value, not a group.",
    ),
    (
      ["--config.learning_rate=-1", "--config.model.max_iter=0"],
      "error: 2 config fields cannot run:\n  config.learning_rate=-1.0: must be a number > 0\n"
      "  config.model.max_iter: max_iter must be an int >= 1; got max_iter=0.",
    ),
    (
      ["--config=experiments/configs/defualt.py"],
      f"FATAL Flags parsing error: --config=experiments/configs/defualt.py: no such file (looked from {REPO})",
    ),
    (["--workdir="], "FATAL Flags parsing error: flag --workdir=: must name a folder."),
  ],
)
def test_command_line_errors_are_one_screen_naming_the_flag_or_field(tfds_dir, tmp_path, arguments, error):
  run = _run_main(tmp_path / "workdir", tfds_dir, *arguments)
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 1
  assert error in out and "Traceback" not in out and len(out.splitlines()) <= 15, out
  assert not os.path.exists(tmp_path / "workdir")  # nothing was made: not even the workdir


def test_four_devices_match_one(tfds_dir):
  assert jax.device_count() == 4
  config = tiny_config(tfds_dir, pretrain_steps=0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    rt, params = trainer.setup(config)
    rt.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    params = jax.device_put(params, rt.replicated)
    opt_state = rt.optimizer.init(params)
    memory = trainer.init_memory(rt, params, config.batch_size)
    stream = OrderedLMStream(rt.task.data.splits["train"], config.batch_size, config.tgt_len)
    step = jax.jit(functools.partial(trainer.train_step, rt, "deq", use_jac=False))
    losses = []
    for k in range(3):
      x, y = (jax.device_put(a, rt.batch_sharding) for a in stream.segment(k))
      params, opt_state, memory, metrics = step(params, opt_state, memory, x, y, k)
      losses.append(float(metrics["loss"]))
    assert len(params["cell"]["qkv"]["v"][...].sharding.device_set) == len(devices)
    results.append((losses, jax.tree.leaves(params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  for a, b in zip(results[0][1], results[1][1], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


_COLLECTIVE = re.compile(r"= .*\b(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(-start)?\(")


def _collectives(hlo: str) -> tuple[int, int, int]:
  """(collectives reachable from a while loop's body or condition, collectives in all, while loops) of HLO text."""
  computations, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif current is not None:
      current.append(line)
  called = lambda lines: re.findall(
    r"(?:body|condition|to_apply|calls|branch_computations)=\{?%?([\w.\-]+)", "\n".join(lines)
  )
  loops = [
    re.findall(r"(?:body|condition)=%?([\w.\-]+)", line)
    for ls in computations.values()
    for line in ls
    if " while(" in line
  ]
  inside, pending = set(), [name for pair in loops for name in pair]
  while pending:
    name = pending.pop()
    if name in computations and name not in inside:
      inside.add(name)
      pending += called(computations[name])
  count = lambda names: sum(1 for n in names for line in computations[n] if _COLLECTIVE.search(line))
  return count(inside), count(computations), len(loops)


def test_four_device_steps_hold_no_collective_inside_a_loop(tfds_dir):
  # Each device solves its own samples (cell_output under the mesh): a collective inside a solver's loop
  # (the convergence test, the weights' gradients) made XLA's CPU runtime deadlock and abort a test run.
  config = tiny_config(
    tfds_dir, model=dict(correction_steps=(2, 4)), correction_weight=0.5, jac_reg=0.5, spectral_radius_every=1
  )
  rt, params = trainer.setup(config)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, config.batch_size)
  x = to_global(np.zeros((config.batch_size, config.tgt_len), np.int32), rt.batch_sharding, config.batch_size)
  programs = {
    "deq step, correction, penalty, radius": functools.partial(
      trainer.train_step, rt, "deq", use_jac=True, use_radius=True
    ),
    "pretraining step": functools.partial(trainer.train_step, rt, "pretrain", use_jac=False),
  }
  for name, program in programs.items():
    inside, total, loops = _collectives(jax.jit(program).lower(params, opt_state, memory, x, x, 0).compile().as_text())
    assert loops >= 1 and total >= 1, (name, loops, total)  # loops, and a program split over the four devices
    assert inside == 0, f"{name}: {inside} of its {total} collectives run inside a loop"
  evaluate = jax.jit(functools.partial(steps.eval_step, rt, "deq"))
  inside, total, loops = _collectives(evaluate.lower(params, memory, x, x).compile().as_text())
  assert loops >= 1 and total >= 1 and inside == 0, (inside, total, loops)


def test_non_finite_steps_are_skipped_then_stop(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir, num_train_steps=20, pretrain_steps=20, max_nonfinite_steps=3, checkpoint_every_steps=2)
  forward, step_fn = steps.model_forward, steps.train_step

  def poisoned_step(rt, phase, params, opt_state, memory, tokens, targets, step, **options):
    """From the 5th step (index 4) on, the loss is NaN."""

    def poisoned_forward(*args, **kwargs):
      out = forward(*args, **kwargs)
      return out._replace(nll=jax.numpy.where(step >= 4, np.nan, out.nll))

    with monkeypatch.context() as patch:
      patch.setattr(steps, "model_forward", poisoned_forward)
      return step_fn(rt, phase, params, opt_state, memory, tokens, targets, step, **options)

  monkeypatch.setattr(loop, "train_step", poisoned_step)
  with pytest.raises(trainer.NonFiniteError, match="3 consecutive steps"):
    trainer.train_and_evaluate(config, str(tmp_path))
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
  assert manager.latest_step() == 6  # steps 5 and 6 were skipped; 7 stopped the run before its checkpoint
  restore = lambda step: manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  after_skips, last_good = restore(6), restore(4)
  for a, b in zip(jax.tree.leaves(after_skips), jax.tree.leaves(last_good), strict=True):
    np.testing.assert_array_equal(a, b)  # skipped steps changed nothing (parameters, optimizer, memory)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(after_skips["params"]))


def test_bad_inputs(tfds_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="wiki.valid.tokens"):
    trainer.setup(tiny_config(tfds_dir / "fresh", data=dict(name="wikitext2", manual_dir=str(tmp_path), data_dir="")))
  with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by the 4 devices"):
    trainer.setup(tiny_config(tfds_dir, batch_size=6))
  with pytest.raises(ValueError, match=r"n_token=500 but the 'wikitext2_sample' vocabulary has 13777"):
    config = tiny_config(tfds_dir)
    config.model.n_token = 500
    trainer.setup(config)
  with pytest.raises(ValueError, match=r"got grad_clip_ratio=0.5, grad_clip_ratio_decay=0.98"):
    trainer.setup(tiny_config(tfds_dir, grad_clip_ratio=0.5))
  with pytest.raises(ValueError, match=r"Unknown field\(s\) \['d_modle'\]"):
    config = tiny_config(tfds_dir)
    config.model.d_modle = 3
    trainer.setup(config)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, flag_values=values, lock_config=True)
  with pytest.raises(flags.UnrecognizedFlagError, match="config.learning_rat"):
    values(["main", f"--config={DEFAULT_CONFIG}", "--config.learning_rat=0.1"])


def _with_seed(config, seed):
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def test_resume_with_another_seed_or_vocabulary_fails(trained, tmp_path):
  config, workdir, _, _ = trained
  workdir = copy_workdir(workdir, tmp_path)
  with pytest.raises(ValueError, match=r"another seed .* from seed=7"):
    trainer.train_and_evaluate(_with_seed(config, 7), str(workdir))
  other = tmp_path / "other_text"
  other.mkdir()
  for name in ("wiki.valid.tokens", "wiki.test.tokens"):
    (other / name).write_text("a b c d e f g h i j k l m n o p q r s t u v w x y z\n" * 40, encoding="utf-8")
  config = config.copy_and_resolve_references()
  config.data.manual_dir, config.data.data_dir = str(other), str(tmp_path / "tfds_other")
  with pytest.raises(ValueError, match=r"vocabulary of 13777 types .* now gives 27"):
    trainer.train_and_evaluate(config, str(workdir))


def test_jacobian_penalty_enters_the_update(tfds_dir):
  plain, metrics = one_update(tfds_dir, 0, jac_reg=0.0)
  assert "jac_loss" not in metrics
  penalised, metrics = one_update(tfds_dir, 0, jac_reg=5.0)
  # Hutchinson estimate of ||df/dz||_F^2 / n: positive, and below the contraction-free bound of
  # a post-LayerNorm cell at initialisation (an exploding estimate would mean a wiring error).
  assert 0.0 < float(metrics["jac_loss"]) < 10.0
  assert max_difference(penalised, plain) > DIFFERENT


def test_jacobian_penalty_weight_switches_at_jac_reg_until_step(tfds_dir):
  # Step 3 lies past jac_reg_until_step = 2: the update is that of the constant weight jac_reg_after.
  switched_off, _ = one_update(tfds_dir, 3, jac_reg=5.0, jac_reg_until_step=2, jac_reg_after=0.0)
  plain, _ = one_update(tfds_dir, 3, jac_reg=0.0)
  assert max_difference(switched_off, plain) < SAME
  switched_on, _ = one_update(tfds_dir, 3, jac_reg=0.0, jac_reg_until_step=2, jac_reg_after=5.0)
  constant, _ = one_update(tfds_dir, 3, jac_reg=5.0)
  assert max_difference(switched_on, constant) < SAME
  assert max_difference(switched_on, plain) > DIFFERENT
  config = tiny_config(tfds_dir, jac_reg=0.5, jac_reg_until_step=100, jac_reg_after=0.05)
  assert [float(schedules.jac_reg_weight(config, s)) for s in (0, 99, 100, 500)] == pytest.approx(
    [0.5, 0.5, 0.05, 0.05]
  )
  assert [trainer.uses_jac_reg(config, "deq", s) for s in (0, 100)] == [True, True]
  config.jac_reg_after = 0.0
  assert [trainer.uses_jac_reg(config, "deq", s) for s in (0, 99, 100, 500)] == [True, True, False, False]
  assert not trainer.uses_jac_reg(config, "pretrain", 0)
  with pytest.raises(ValueError, match=r"jac_reg_after=-0.1"):
    trainer.check_config(tiny_config(tfds_dir, jac_reg_after=-0.1))


def test_learning_rate_follows_the_cosine_then_anneals_linearly_from_lr_anneal_from_step(tfds_dir):
  # Warmup W = 10 to 1e-2, cosine over D = lr_decay_steps = 200, then from A = 60 a line to 0 at N = 100.
  peak, w, d, a, n = 1e-2, 10, 200, 60, 100
  cosine = lambda t: peak * t / w if t < w else peak * 0.5 * (1 + np.cos(np.pi * (t - w) / (d - w)))
  expected = lambda t: cosine(t) if t < a else cosine(a) * (n - t) / (n - a)
  fields = dict(learning_rate=peak, warmup_steps=w, num_train_steps=n, lr_decay_steps=d, lr_anneal_from_step=a)
  config = tiny_config(tfds_dir, grad_clip=0.0, grad_clip_ratio=0.0, weight_decay=0.0, **fields)
  trainer.check_config(config)
  steps_at = (0, 5, 10, 35, 59, 60, 61, 80, 99, 100)
  rates = [float(schedules.learning_rate_schedule(config)(t)) for t in steps_at]
  np.testing.assert_allclose(rates, [expected(t) for t in steps_at], rtol=1e-5, atol=1e-12)
  assert rates[-1] == 0.0 and rates[6] < cosine(61) - 1e-5  # the line lies below the cosine it leaves
  # Without the anneal and with lr_decay_steps 0, the cosine reaches 0 at num_train_steps.
  plain = tiny_config(tfds_dir, learning_rate=peak, warmup_steps=w, num_train_steps=n)
  plain_cosine = lambda t: peak * 0.5 * (1 + np.cos(np.pi * (t - w) / (n - w)))
  np.testing.assert_allclose(
    [float(schedules.learning_rate_schedule(plain)(t)) for t in (10, 55, 100)], [plain_cosine(t) for t in (10, 55, 100)]
  )
  # The optimizer applies the rate of its own update count t: AdamW's first moments from zero at count t give
  # the update -lr(t) m / (sqrt(v) + eps), m = (1 - b1) g / (1 - b1^(t+1)), v = (1 - b2) g^2 / (1 - b2^(t+1)).
  optimizer = schedules.make_optimizer(config)
  params = {"w": jnp.array([0.5, -2.0, 3.0])}
  grads = {"w": jnp.array([0.3, -1e-3, 2.0])}
  for t in (35, 80):
    state = optax.tree_utils.tree_set(optimizer.init(params), count=jnp.asarray(t, jnp.int32))
    updates, _ = optimizer.update(grads, state, params)
    m = 0.1 * grads["w"] / (1 - 0.9 ** (t + 1))
    v = 0.001 * grads["w"] ** 2 / (1 - 0.999 ** (t + 1))
    np.testing.assert_allclose(updates["w"], -expected(t) * m / (jnp.sqrt(v) + 1e-8), rtol=1e-5)
  with pytest.raises(ValueError, match=r"lr_anneal_from_step=100 with config.num_train_steps=100"):
    trainer.check_config(tiny_config(tfds_dir, num_train_steps=100, lr_anneal_from_step=100))
  with pytest.raises(ValueError, match=r"lr_decay_steps=-1"):
    trainer.check_config(tiny_config(tfds_dir, lr_decay_steps=-1))


def test_jacobian_penalty_starts_at_jac_reg_from_step(tfds_dir):
  # Step 3 lies before jac_reg_from_step = 5: no penalty, the update is the unpenalised one; from step 5 on
  # the weight is jac_reg, and jac_reg_after from jac_reg_until_step on.
  waiting, metrics = one_update(tfds_dir, 3, jac_reg=5.0, jac_reg_from_step=5)
  assert "jac_loss" not in metrics
  plain, _ = one_update(tfds_dir, 3, jac_reg=0.0)
  assert max_difference(waiting, plain) < SAME
  started, _ = one_update(tfds_dir, 5, jac_reg=5.0, jac_reg_from_step=5)
  constant, _ = one_update(tfds_dir, 5, jac_reg=5.0)
  assert max_difference(started, constant) < SAME
  assert max_difference(started, plain) > DIFFERENT
  config = tiny_config(tfds_dir, jac_reg=0.5, jac_reg_from_step=40, jac_reg_until_step=100, jac_reg_after=0.05)
  assert [float(schedules.jac_reg_weight(config, s)) for s in (0, 39, 40, 99, 100, 500)] == pytest.approx(
    [0.0, 0.0, 0.5, 0.5, 0.05, 0.05]
  )
  assert [trainer.uses_jac_reg(config, "deq", s) for s in (0, 39, 40, 100)] == [False, False, True, True]
  with pytest.raises(ValueError, match=r"jac_reg_from_step=100 with config.jac_reg_until_step=100"):
    trainer.check_config(tiny_config(tfds_dir, jac_reg_from_step=100, jac_reg_until_step=100))
  with pytest.raises(ValueError, match=r"jac_reg_from_step=-1"):
    trainer.check_config(tiny_config(tfds_dir, jac_reg_from_step=-1))


def test_pretrain_jacobian_penalty_applies_to_unrolled_steps_only(tfds_dir):
  # The DEQ-phase weights leave an unrolled step alone; pretrain_jac_reg enters it, and not a DEQ step.
  _, metrics = plain_update(tfds_dir, "pretrain")
  assert "jac_loss" not in metrics
  assert not changes_update(tfds_dir, "pretrain", jac_reg=5.0)
  assert changes_update(tfds_dir, "pretrain", pretrain_jac_reg=5.0)
  _, metrics = one_update(tfds_dir, 0, phase="pretrain", pretrain_jac_reg=5.0)
  assert 0.0 < float(metrics["jac_loss"]) < 10.0
  assert not changes_update(tfds_dir, "deq", pretrain_jac_reg=5.0)
  with pytest.raises(ValueError, match=r"pretrain_jac_reg=-1"):
    trainer.check_config(tiny_config(tfds_dir, pretrain_jac_reg=-1.0))


def test_settle_iterations_ramp_and_enter_unrolled_steps_only(tfds_dir):
  config = tiny_config(
    tfds_dir, pretrain_settle_iters=12, pretrain_settle_from_step=500, pretrain_settle_until_step=850
  )
  ks = [int(schedules.settle_overrides(config, s, "pretrain")["settle_iters"]) for s in (0, 500, 675, 849, 850, 900)]
  assert ks == [0, 0, 6, 11, 12, 12]  # floor(12 * (step - 500) / 350), clipped to [0, 12]
  assert schedules.settle_overrides(config, 900, "deq") == {}
  jump = tiny_config(tfds_dir, pretrain_settle_iters=4, pretrain_settle_from_step=3)
  assert [int(schedules.settle_overrides(jump, s, "pretrain")["settle_iters"]) for s in (2, 3, 9)] == [0, 4, 4]
  # Settle iterations change an unrolled step, not before the ramp starts, and never a DEQ step.
  assert changes_update(tfds_dir, "pretrain", pretrain_settle_iters=4)
  assert not changes_update(tfds_dir, "pretrain", pretrain_settle_iters=4, pretrain_settle_from_step=1)
  assert not changes_update(tfds_dir, "deq", pretrain_settle_iters=4)
  with pytest.raises(ValueError, match=r"pretrain_settle_iters=-1"):
    trainer.check_config(tiny_config(tfds_dir, pretrain_settle_iters=-1))


def test_phantom_backward_in_deq_steps(tfds_dir):
  # The config's backward options reach fixed_point in DEQ steps: no adjoint solve (0 backward
  # steps), and each of phantom_steps and phantom_damping changes the update; unrolled steps ignore them.
  implicit, implicit_metrics = plain_update(tfds_dir, "deq")
  one, metrics = one_update(tfds_dir, 0, model=dict(backward="phantom"))
  two, _ = one_update(tfds_dir, 0, model=dict(backward="phantom", phantom_steps=2))
  damped, _ = one_update(tfds_dir, 0, model=dict(backward="phantom", phantom_steps=2, phantom_damping=0.5))
  assert float(implicit_metrics["b_steps"]) > 0 and float(metrics["b_steps"]) == 0.0
  assert min(max_difference(one, implicit), max_difference(two, one), max_difference(damped, two)) > DIFFERENT
  assert not changes_update(tfds_dir, "pretrain", model=dict(backward="phantom"))
  with pytest.raises(ValueError, match=r"Unknown backward='adjoint'"):
    trainer.check_config(tiny_config(tfds_dir, model=dict(backward="adjoint")))
  with pytest.raises(ValueError, match=r"phantom_steps=0"):
    trainer.check_config(tiny_config(tfds_dir, model=dict(phantom_steps=0)))

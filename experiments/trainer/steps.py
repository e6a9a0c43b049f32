"""The compiled steps: one training update, one evaluation batch, and the evaluation loop around it.

Every model is called the same way (`deqjax.models.output`), so nothing here depends on which
model or task runs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import deqjax
from experiments.trainer.models import build_model
from experiments.trainer.runtime import Runtime, to_global
from experiments.trainer.schedules import dropout_base_key, jac_reg_weight, settle_overrides


def model_forward(rt: Runtime, params, tokens, targets, memory, *, key, phase, probe=None, jac_key=None, **solver):
  """The model's `ModelOutput` for one batch in phase `phase` (`solver`: `fixed_point` options of DEQ phases)."""
  model = nnx.merge(rt.graphdef, params, rt.rest)
  extra = solver if probe is None else {"backward_probe": probe, **solver}
  # Under the run's mesh, each device solves its own samples (`deqjax.nn.deq_layer.cell_output`).
  with jax.sharding.use_abstract_mesh(rt.mesh.abstract_mesh):
    return model(
      tokens, targets, memory, dropout_key=key, dtype=rt.dtype, unrolled=phase == "pretrain", jac_key=jac_key, **extra
    )


def train_step(
  rt: Runtime, phase: str, params, opt_state, memory, tokens, targets, step, *, use_jac: bool, max_iter=None,
  use_radius: bool = False, use_correction: bool = True,
):  # fmt: skip
  """One update; a non-finite loss or gradient leaves parameters, optimizer state and memory unchanged.

  use_jac: whether the update computes the Jacobian penalty (`uses_jac_reg` at this step); its
  weight follows the traced `step`, so one compiled update serves a change from one positive
  weight to another. max_iter: this step's forward cap (`train_max_iter`; None: the model's).
  use_radius: also estimate the spectral radius of df/dz at z* (`spectral_radius_every`; DEQ steps).
  use_correction: apply the model's fixed-point correction, if it has one (`uses_correction` at this step).
  """
  key = jax.random.fold_in(dropout_base_key(rt.config), step)
  dropout_key, jac_key = jax.random.split(key)
  batch = tokens.shape[0]
  probe = deqjax.backward_probe(batch) if phase == "deq" else None
  overrides = settle_overrides(rt.config, step, phase)
  if max_iter is not None:
    overrides["max_iter"] = max_iter
  if not use_correction and phase == "deq":
    overrides["correct"] = False
  if use_radius and phase == "deq":  # its own key: the dropout and probe keys stay those of every other step
    overrides["radius_key"] = jax.random.fold_in(key, 2)

  def loss_fn(params, probe):
    out = model_forward(
      rt, params, tokens, targets, memory, key=dropout_key, phase=phase, probe=probe,
      jac_key=jac_key if use_jac else None, **overrides,
    )  # fmt: skip
    nll = jnp.mean(out.nll)
    loss = nll + jac_reg_weight(rt.config, step, phase) * jnp.mean(out.jac_loss) if use_jac else nll
    if out.correction_nll is not None:  # the fixed-point correction: the mean loss of the kept iterates' outputs
      loss = loss + rt.config.correction_weight * jnp.mean(out.correction_nll)
    return loss, (nll, out)

  (loss, (nll, out)), (grads, probe_bar) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, probe)
  grad_norm = optax.tree_utils.tree_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = rt.optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = {"loss": nll, "grad_norm": grad_norm, "finite": finite}
  if out.correction_nll is not None:  # per kept iterate, the mean NLL of its output
    metrics.update(
      {f"correction_loss_{k}": jnp.mean(out.correction_nll[k]) for k in range(out.correction_nll.shape[0])}
    )
  if out.spectral_radius is not None:  # per sample at z*: the mean and the largest
    metrics.update(spectral_radius=jnp.mean(out.spectral_radius), spectral_radius_max=jnp.max(out.spectral_radius))
  if use_jac:  # the per-sample penalty: its mean (what the loss adds) and its largest value
    metrics.update(jac_loss=jnp.mean(out.jac_loss), jac_loss_max=jnp.max(out.jac_loss))
  if phase == "deq":
    metrics.update(solver_metrics(out.info, probe_bar))
  new_memory = keep(out.memory, memory) if _same_shapes(out.memory, memory) else out.memory
  return keep(new_params, params), keep(new_opt_state, opt_state), new_memory, metrics


def solver_metrics(info: deqjax.SolveInfo, backward: deqjax.BackwardStats) -> dict:
  """A DEQ step's solver figures: mean steps and relative residuals, forward (f_) and backward (b_), and the
  residuals' medians over the samples (f_residual_median, b_residual_median: a few unconverged samples can
  pull a mean above the tolerance while most samples are well within it); the fractions of samples
  whose forward / adjoint solve converged (f_converged, b_converged); and `converged`, 1 when every
  sample's solves both converged (its mean over steps is the fraction of steps whose gradient is an
  implicit gradient throughout)."""
  f_converged = info.converged.astype(jnp.float32)
  b_converged = (backward.status == deqjax.Status.CONVERGED).astype(jnp.float32)
  return dict(
    f_steps=jnp.mean(info.nstep.astype(jnp.float32)),
    f_residual=jnp.mean(info.rel_residual.astype(jnp.float32)),
    b_steps=jnp.mean(backward.nstep),
    b_residual=jnp.mean(backward.rel_residual),
    f_residual_median=jnp.median(info.rel_residual.astype(jnp.float32)),
    b_residual_median=jnp.median(backward.rel_residual),
    f_converged=jnp.mean(f_converged),
    b_converged=jnp.mean(b_converged),
    converged=jnp.min(jnp.minimum(f_converged, b_converged)),
  )


def _same_shapes(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def init_memory(rt: Runtime, params, batch: int):
  """The model's empty memory for `batch` rows (length 0, or the TrellisNet's zero history), batch-sharded."""
  memory = nnx.merge(rt.graphdef, params, rt.rest).init_memory(batch, rt.dtype)
  return jax.device_put(memory, rt.batch_sharding)


def eval_runtime(rt: Runtime) -> Runtime:
  """The runtime evaluation uses: the same weights, the model rebuilt with eval_mem_len when that differs."""
  c = rt.config
  eval_mem_len = c.get("eval_mem_len", -1)
  if eval_mem_len < 0 or eval_mem_len == c.model.get("mem_len", 0):
    return rt
  if "eval_runtime" not in rt.cache:
    config = c.copy_and_resolve_references()
    config.model.mem_len = eval_mem_len
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param, ...)
    rt.cache["eval_runtime"] = dataclasses.replace(rt, config=config, graphdef=graphdef, cache={})
  return rt.cache["eval_runtime"]


# The forward solve's figures over an evaluation, summed per batch (a `_max` one is a maximum).
SOLVE_SUMS = ("solve_samples", "solve_converged", "solve_steps", "solve_residual", "solve_residual_max")


def solve_sums(info: deqjax.SolveInfo) -> dict:
  """One evaluation batch's forward solves (`info` per sample `[b]`, or scalars): samples, converged samples,
  and the sums of steps and relative residuals, with the largest relative residual."""
  residual = info.rel_residual.astype(jnp.float32)
  return {
    "solve_samples": jnp.asarray(residual.size, jnp.float32),
    "solve_converged": jnp.sum(info.converged.astype(jnp.float32)),
    "solve_steps": jnp.sum(info.nstep.astype(jnp.float32)),
    "solve_residual": jnp.sum(residual),
    "solve_residual_max": jnp.max(residual),
  }


def solve_results(totals: dict, final: bool) -> dict:
  """The evaluation's solve figures from the summed `solve_sums` (none for a model without solves): the share of
  samples whose forward solve converged, their mean steps, mean and largest relative residual; named `test_f_...`
  for the final test and `eval_f_...` for the periodic evaluations."""
  if "solve_samples" not in totals:
    return {}
  prefix, samples = "test_f_" if final else "eval_f_", totals["solve_samples"]
  return {
    f"{prefix}converged": totals["solve_converged"] / samples,
    f"{prefix}steps": totals["solve_steps"] / samples,
    f"{prefix}residual": totals["solve_residual"] / samples,
    f"{prefix}residual_max": totals["solve_residual_max"],
  }


def eval_step(rt: Runtime, phase: str, params, memory, tokens, targets, **solver):
  """(the task's sums over one evaluation batch, with the forward solves' `solve_sums` for a DEQ call; the new
  memory); no dropout, `solver`: `fixed_point` overrides."""
  out = model_forward(rt, params, tokens, targets, memory, key=None, phase=phase, **solver)
  sums = rt.task.batch_sums(out, targets)
  if out.info is not None:
    sums.update(solve_sums(out.info))
  return sums, out.memory


def evaluation_solver(rt: Runtime, phase: str, solver: dict) -> dict:
  """The `fixed_point` overrides an evaluation in `phase` runs with: `solver`, and for a DEQ phase the config's
  `eval_max_iter` (when set) as the cap unless `solver` names one."""
  eval_max_iter = rt.config.get("eval_max_iter", 0)
  if phase == "deq" and eval_max_iter and "max_iter" not in solver:
    return {**solver, "max_iter": eval_max_iter}
  return solver


def evaluate_task(rt: Runtime, params, phase: str, final: bool, eval_set=None, **solver) -> dict:
  """The task's named results on its validation (`final` False) or test set, in phase `phase`, and for a DEQ
  phase how its forward solves ended (`solve_results`: the figures' residuals).

  `eval_set`: another `EvalSet` of the task to read instead; `solver`: `fixed_point` options
  overriding the config's for DEQ models (e.g. max_iter=8; the config's `eval_max_iter`, when set, is
  the cap otherwise). Sums are added up in float64 on the host.
  """
  solver = evaluation_solver(rt, phase, solver)
  eval_set = rt.task.eval_set(final) if eval_set is None else eval_set
  eval_rt = eval_runtime(rt) if eval_set.carry_memory else rt
  name = ("eval", phase, eval_set.carry_memory, *sorted(solver.items()))
  step = rt.jitted(name, functools.partial(eval_step, eval_rt, phase, **solver))
  empty = init_memory(eval_rt, params, eval_set.batch_size)
  memory, totals = empty, {}
  for inputs, targets in eval_set.batches():
    x, y = (to_global(a, rt.batch_sharding, eval_set.batch_size) for a in (inputs, targets))
    sums, new_memory = step(params, memory, x, y)
    memory = new_memory if eval_set.carry_memory else empty
    for key, value in jax.device_get(sums).items():
      combine = max if key.endswith("_max") else sum
      totals[key] = combine((totals[key], float(value))) if key in totals else float(value)
  task_totals = {key: value for key, value in totals.items() if key not in SOLVE_SUMS}
  return {**rt.task.summarize(task_totals, final), **solve_results(totals, final)}

"""What changes with the step: the learning rate, the training phase, the Jacobian penalty's weight.

A DEQ run trains in two phases: "pretrain" (the weight-tied cell unrolled `pretrain_depth`
times, the reference's warm-up) for `pretrain_steps`, then "deq" (the equilibrium, solved).
Runs with `execution="unrolled"` stay in "pretrain"; models without an equilibrium train in
"layers" throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.trainer.averaging import average_parameters
from experiments.trainer.clipping import clip_relative_to_running_norm

PHASES = ("pretrain", "deq", "layers")


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (fixed, then relative to the running norm when grad_clip_ratio > 0),
  its learning rate `learning_rate_schedule(config)`; with ema_decay > 0, followed by the parameters' moving
  average (`averaging.average_parameters`), which evaluation then reads."""
  clips = [optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()]
  if config.grad_clip_ratio > 0:  # only then: checkpoints of runs without it keep their state's structure
    clips.append(clip_relative_to_running_norm(config.grad_clip_ratio, config.grad_clip_ratio_decay))
  adamw = optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay)
  if config.get("ema_decay", 0.0) > 0:  # the same: only then
    return optax.chain(*clips, adamw, average_parameters(config.ema_decay, config.get("ema_from_step", 0)))
  return optax.chain(*clips, adamw)


def learning_rate_schedule(config) -> optax.Schedule:
  """The learning rate of update `count` (optax's count: the number of updates applied before it).

  Linear warmup over `warmup_steps`, then cosine decay reaching 0 at `lr_decay_steps` (0: at
  num_train_steps). With `lr_anneal_from_step` A > 0, from update A on the rate instead falls
  linearly from the cosine's value at A to 0 at num_train_steps N: lr(t) = cos(A) (N - t) / (N - A),
  so a run can end within a time budget on a low rate while its earlier steps keep the schedule of
  a longer one.
  """
  decay_steps = config.get("lr_decay_steps", 0) or config.num_train_steps
  warmup = min(config.warmup_steps, decay_steps)
  cosine = optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else config.learning_rate,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(decay_steps, warmup + 1),
    end_value=0.0,
  )
  start = config.get("lr_anneal_from_step", 0)
  if start <= 0:
    return cosine
  anneal = optax.linear_schedule(cosine(start), 0.0, transition_steps=config.num_train_steps - start)
  return optax.join_schedules([cosine, anneal], boundaries=[start])


def phase_at(config, step: int) -> str:
  """The training phase of step `step`: "pretrain" (unrolled weight-tied cell), "deq" or "layers"."""
  if config.execution == "layers":
    return "layers"
  if config.execution == "unrolled" or step < config.pretrain_steps:
    return "pretrain"
  return "deq"


def final_phase(config) -> str:
  """The phase a run is judged by: DEQ runs' solver phase (after pretraining), the others' only phase."""
  return phase_at(config, config.pretrain_steps)


def uses_jac_reg(config, phase: str, step: int) -> bool:
  """Whether training step `step` (a Python int) of phase `phase` computes the Jacobian penalty.

  True where its weight (`jac_reg_weight`) is positive and, in the DEQ phase, with probability
  `jac_reg_prob` (a draw fixed by seed and step; the 2021 reference's `jac_loss_freq`). The training
  loop compiles one update per value, so steps without the penalty do not pay for it.
  """
  if phase not in ("pretrain", "deq") or _penalty_weight(config, step, phase, np.where) <= 0:
    return False
  return phase == "pretrain" or config.jac_reg_prob >= 1 or step_draw(config, step, _JAC_STREAM) < config.jac_reg_prob


def uses_correction(config, phase: str, step: int) -> bool:
  """Whether DEQ training step `step` applies the fixed-point correction: `correction_weight` > 0 and the step
  before `correction_until_step` (0: throughout). Steps without it compile an update that skips it."""
  until = config.get("correction_until_step", 0)
  return phase == "deq" and config.get("correction_weight", 0.0) > 0 and (until == 0 or step < until)


_JAC_STREAM, _CAP_STREAM = 1, 2


def step_draw(config, step: int, stream: int) -> float:
  """A uniform number in [0, 1) fixed by (seed, step, stream): a step's random choices survive a resume."""
  return float(np.random.default_rng((config.seed, step, stream)).random())


def train_max_iter(config, phase: str, step: int, model_max_iter: int | None) -> int | None:
  """The forward cap of DEQ training step `step`: the model's `model_max_iter` minus a uniform draw from
  {0, ..., train_max_iter_delta} (the 2021 reference's `rand_f_thres_delta`); None: the model's own."""
  delta = config.get("train_max_iter_delta", 0)
  if phase != "deq" or delta == 0:
    return None
  return model_max_iter - int(step_draw(config, step, _CAP_STREAM) * (delta + 1))


def jac_reg_weight(config, step, phase: str = "deq") -> jax.Array:
  """gamma at training step `step` (traced or not) of phase `phase`.

  DEQ steps: 0 before jac_reg_from_step, then jac_reg, then jac_reg_after from jac_reg_until_step on;
  unrolled steps: pretrain_jac_reg.
  """
  return jnp.asarray(_penalty_weight(config, step, phase, jnp.where), jnp.float32)


def _penalty_weight(config, step, phase: str, where):
  """The schedule `jac_reg_weight` documents, with `where` np.where (host steps) or jnp.where (traced)."""
  if phase == "pretrain":
    return config.pretrain_jac_reg
  weight = config.jac_reg
  if config.jac_reg_until_step > 0:
    weight = where(step < config.jac_reg_until_step, weight, config.jac_reg_after)
  from_step = config.get("jac_reg_from_step", 0)
  return weight if from_step <= 0 else where(step < from_step, 0.0, weight)


def settle_overrides(config, step, phase: str) -> dict:
  """Model-call options of a training step of phase `phase` at step `step` (traced or not).

  Unrolled steps: `settle_iters`, K(step) = floor(pretrain_settle_iters * ramp), the ramp
  rising linearly from 0 at pretrain_settle_from_step to 1 at pretrain_settle_until_step
  (a step from 0 to 1 at pretrain_settle_from_step when until <= from). Otherwise none.
  """
  if phase == "pretrain" and config.pretrain_settle_iters > 0:
    start, end = config.pretrain_settle_from_step, config.pretrain_settle_until_step
    ramp = jnp.clip((step - start) / (end - start), 0.0, 1.0) if end > start else jnp.where(step >= start, 1.0, 0.0)
    return {"settle_iters": jnp.floor(config.pretrain_settle_iters * ramp).astype(jnp.int32)}
  return {}


def dropout_base_key(config) -> jax.Array:
  """The key every step's dropout and probe keys are folded from (parameters use `seed` itself)."""
  return jax.random.key(config.seed + 1)

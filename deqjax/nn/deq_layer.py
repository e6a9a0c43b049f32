"""Running a cell to its equilibrium, or unrolled L times (pretraining)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deqjax import Broyden, SolveInfo, check_backward_options, fixed_point, jacobian_frobenius_sq, spectral_radius
from deqjax._validation import check_stall, check_trajectory_steps


def solve_cell(
  step: Callable[[Any, Any, Any], Any],
  weights: Any,
  inputs: Any,
  z0: Any,
  *,
  unroll_depth: int | None = None,
  settle_iters: int | jax.Array = 0,
  **solver_options,
) -> tuple[Any, SolveInfo | None]:
  """The cell's output state: its equilibrium, or the cell unrolled a fixed number of times.

  Args:
    step: the cell's f(weights, z, inputs) (pure; weights are passed, not closed over).
    weights, inputs: as `step` takes them (weights differentiated implicitly).
    z0: the initial state (its gradient is zero when solving).
    unroll_depth: None solves z* = f(z*) with `deqjax.fixed_point(**solver_options)`; an int
      L >= 1 applies f L times from z0 with ordinary backprop (the reference's shallow
      weight-tied warm-up, "pretraining").
    settle_iters: unrolled only: f is first applied this many times without gradient
      (z0 -> f^K(z0), a stop-gradient warm start; an int or a traced integer), so the L
      differentiated layers start from an iterate K steps along: the loss then asks the map to
      work from late iterates too, not only from z0. Must be 0 when solving.

  Returns:
    (z, info): info is the forward `SolveInfo` when solving and None when unrolled.
  """
  no_settling = _check_settle_iters(settle_iters, unroll_depth)
  if unroll_depth is None:
    return fixed_point(step, weights, inputs, z0, **solver_options)
  if isinstance(unroll_depth, bool) or not isinstance(unroll_depth, int) or unroll_depth < 1:
    raise ValueError(f"unroll_depth must be None (solve) or an int >= 1; got {unroll_depth!r}.")
  if not no_settling:  # a warm start with no gradient to anything
    z0 = unrolled(step, *jax.lax.stop_gradient((weights, inputs, z0)), settle_iters)
  return unrolled(step, weights, inputs, z0, unroll_depth), None


def _check_settle_iters(settle_iters, unroll_depth) -> bool:
  """Errors on a bad `settle_iters`; True when it is the static 0 (no settling)."""
  if isinstance(settle_iters, jax.Array):
    if settle_iters.ndim != 0 or not jnp.issubdtype(settle_iters.dtype, jnp.integer):
      raise TypeError(f"settle_iters must be an int or a scalar integer array; got {settle_iters!r}.")
    no_settling = False
  elif isinstance(settle_iters, int) and not isinstance(settle_iters, bool):
    if settle_iters < 0:
      raise ValueError(f"settle_iters must be >= 0; got {settle_iters!r}.")
    no_settling = settle_iters == 0
  else:
    raise TypeError(f"settle_iters must be an int or a scalar integer array; got {settle_iters!r}.")
  if unroll_depth is None and not no_settling:
    raise ValueError(
      f"settle_iters is an option of the unrolled cell; got settle_iters={settle_iters!r} with unroll_depth=None."
    )
  return no_settling


def check_int(name: str, value, low: int) -> None:
  """ValueError naming `name` unless `value` is an int >= `low` (config dataclasses check their fields with it)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an int >= {low}; got {name}={value!r}.")


def check_bool(name: str, value) -> None:
  """ValueError naming `name` unless `value` is a bool."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be a bool; got {name}={value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEQSettings:
  """The solver settings of the DEQ models (a base of their config dataclasses).

  The solver fields carry `deqjax.fixed_point`'s own names.

  Attributes:
    max_iter, backward_max_iter: forward / backward (adjoint) solver caps.
    rtol, backward_rtol: relative tolerances of the forward / backward solves (absolute
      tolerances are 0: the relative test alone decides).
    backward: how training differentiates the equilibrium: "implicit" (the adjoint solve) or
      "phantom" (`phantom_steps` damped unrolled steps, damping `phantom_damping`).
    backward_failure: the implicit backward's policy for samples whose adjoint solve did not
      converge: "keep" the inexact result, fall back to the "phantom" gradient, or "drop" their
      gradient through the equilibrium (`fixed_point`'s option of that name).
    stall_window, stall_margin: stall detection in both solves (`fixed_point`'s options; 0: off):
      a sample whose residual has not fallen by the relative margin for that many steps stops.
    correction_steps: the fixed-point correction (Bai et al., 2022): in training, the forward
      solve's iterates after these step counts (increasing, each <= max_iter) are kept (detached)
      and the cell is applied once more to each, f(stop_gradient(z_k)) (a one-step phantom
      gradient); the models score these outputs as they score the equilibrium's (`ModelOutput.
      correction_nll`), and the trainer adds `correction_weight` x their mean loss. (): off.
    broyden_history: Broyden updates kept per solve (None: all, as the reference; fewer saves
      2 x history x state memory per solve).
    pretrain_depth: layers of the unrolled cell while pretraining.
    feed_fz: in training, feed f(z*) rather than z* to the softmax, as the 2019 reference does
      (its `deqback` applies f once more, with gradients, to the equilibrium). Evaluation and the
      unrolled cell read the state itself, as the reference does.
    subseq_len: solve each segment in consecutive sub-sequences of this many positions, each
      after the previous one and with the previous one's equilibrium as its history (the
      reference's `subseq_len`; 0: the whole segment at once).
  """

  max_iter: int = 30
  backward_max_iter: int = 40
  rtol: float = 1e-3
  backward_rtol: float = 1e-3
  backward: str = "implicit"
  phantom_steps: int = 1
  phantom_damping: float = 1.0
  backward_failure: str = "keep"
  stall_window: int = 0
  stall_margin: float = 0.0
  broyden_history: int | None = None
  correction_steps: tuple[int, ...] = ()
  pretrain_depth: int = 2
  feed_fz: bool = True
  subseq_len: int = 0

  def __post_init__(self):
    """Checks the solver settings when the config is made (not at the first solve), naming each field."""
    for name in ("max_iter", "backward_max_iter", "pretrain_depth", "phantom_steps"):
      check_int(name, getattr(self, name), low=1)
    check_int("subseq_len", self.subseq_len, low=0)
    check_int("stall_window", self.stall_window, low=0)  # 0: off (the core's None)
    check_stall(self.stall_window or None, self.stall_margin)
    if self.broyden_history is not None:
      check_int("broyden_history", self.broyden_history, low=1)
    for name in ("rtol", "backward_rtol"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0; got {name}={value!r}.")
    check_bool("feed_fz", self.feed_fz)
    check_backward_options(self.backward, self.phantom_steps, self.phantom_damping, self.backward_failure)
    try:  # a config error is a ValueError, whatever kind the core's check raised
      steps = check_trajectory_steps(self.correction_steps, self.max_iter, name="correction_steps")
    except TypeError as error:
      raise ValueError(str(error)) from None
    object.__setattr__(self, "correction_steps", steps)

  def solver_options(self, **overrides) -> dict:
    """`fixed_point` options: per-sample Broyden with relative tolerances, overridable per call."""
    options = dict(
      solver=Broyden(history=self.broyden_history),
      max_iter=self.max_iter,
      tol=0.0,
      rtol=self.rtol,
      batch_axis=0,
      backward=self.backward,
      backward_max_iter=self.backward_max_iter,
      backward_tol=0.0,
      backward_rtol=self.backward_rtol,
      phantom_steps=self.phantom_steps,
      phantom_damping=self.phantom_damping,
      backward_failure=self.backward_failure,
      stall_window=self.stall_window or None,
      stall_margin=self.stall_margin,
    )
    options.update(overrides)
    return options


class CellExtras(NamedTuple):
  """What a DEQ cell stage computes beside its output, when asked.

  Attributes:
    jac_loss: `[b]` the per-sample Jacobian penalty (a `jac_key` was given), else None.
    corrections: the fixed-point correction's outputs, f(stop_gradient(z_k)) at the kept iterates
      (`DEQSettings.correction_steps`, training solves only), each shaped like the output; () if none.
    spectral_radius: `[b]` a power-method estimate of the spectral radius of df/dz at z* per sample
      (`deqjax.spectral_radius`, no gradient) when a `radius_key` was given, else None.
  """

  jac_loss: jax.Array | None = None
  corrections: tuple = ()
  spectral_radius: jax.Array | None = None


def cell_output(
  step,
  weights,
  inputs,
  z0,
  settings: DEQSettings,
  *,
  unrolled: bool,
  training: bool,
  jac_key=None,
  settle_iters=0,
  radius_key=None,
  correct: bool = True,
  shared_inputs: tuple[str, ...] = (),
  **solver_overrides,
):
  """A DEQ model's cell stage: the equilibrium (or the unrolled state), what the softmax reads, and more.

  `unrolled`: apply the cell `settings.pretrain_depth` times instead of solving; `settle_iters` is
  `solve_cell`'s (unrolled only); `radius_key` asks for the spectral radius at z* (solves only;
  the models pass it on with the solver overrides); `correct` (static): False skips the fixed-point
  correction of `settings.correction_steps` in this call (a trainer's schedule turning it off, the
  update compiled once per value); `solver_overrides` override
  `settings.solver_options`. An unrolled call given solver overrides or a `radius_key` is a
  TypeError naming them (they would have no effect).

  Returns:
    (z, output, info, extras): z from `solve_cell`; output = f(z) when training the equilibrium with
    `settings.feed_fz`, else z; the forward `SolveInfo` (None when unrolled); `CellExtras` (the
    per-sample `jacobian_penalty` when `jac_key` is given; the fixed-point correction's outputs when
    training a solve with `settings.correction_steps`). Every state leaf has the batch on axis 0.

  Under a mesh of more than one device with automatic axes (`jax.set_mesh` or
  `jax.sharding.use_abstract_mesh`; the experiments' steps trace under theirs), each device runs the
  stage on its own samples (`jax.shard_map`, the batch split over all the mesh's axes), as the
  reference's DataParallel replicas each solve their own chunk: a device's solves stop when its
  samples converge, and no loop holds a collective. (Partitioned by the compiler instead, every
  solver iteration all-reduces its convergence test and the weights' gradients, and XLA's CPU
  runtime can deadlock on collectives inside loops: a test run aborted after 300 s with three
  devices waiting in a loop's all-reduce and the fourth never arriving.) The gradients of the
  weights and of `shared_inputs` are summed over the devices once, at the stage's boundary.
  Per-sample results are those of the whole batch to rounding; `jac_key` and `radius_key` draw on
  each device its own vectors (the key folded with the device's index). `weights` have no batch
  axis; every leaf of `inputs` has the batch on axis 0 except, when `inputs` is a dict, those under
  the keys `shared_inputs`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    return _per_device(
      mesh, step, weights, inputs, z0, settings, unrolled=unrolled, training=training, jac_key=jac_key,
      settle_iters=settle_iters, radius_key=radius_key, correct=correct, shared_inputs=shared_inputs,
      **solver_overrides,
    )  # fmt: skip
  return _cell_output(
    step, weights, inputs, z0, settings, unrolled=unrolled, training=training, jac_key=jac_key,
    settle_iters=settle_iters, radius_key=radius_key, correct=correct, **solver_overrides,
  )  # fmt: skip


def _per_device(mesh, step, weights, inputs, z0, settings, *, shared_inputs, **options):
  """`_cell_output` under `jax.shard_map`: the batch split over every axis of `mesh`, the rest replicated."""
  if shared_inputs and (not isinstance(inputs, dict) or not set(shared_inputs) <= set(inputs)):
    keys = sorted(inputs) if isinstance(inputs, dict) else f"none (inputs is a {type(inputs).__name__})"
    raise ValueError(f"shared_inputs must name keys of the inputs dict; got {shared_inputs!r}, keys {keys}.")
  batch = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
  replicated = jax.sharding.PartitionSpec()
  shape = jax.tree.leaves(z0)[0].shape
  if not shape or shape[0] % mesh.size:
    raise ValueError(f"z0 {shape}: its batch axis (0) does not split over the mesh's {mesh.size} devices.")
  # Arrays go in as arguments (closed-over tracers would count as replicated); the rest stays static.
  arrays = {
    name: options.pop(name) for name in ("jac_key", "radius_key", "backward_probe") if options.get(name) is not None
  }
  if isinstance(options.get("settle_iters"), jax.Array):
    arrays["settle_iters"] = options.pop("settle_iters")
  specs = {name: batch if name == "backward_probe" else replicated for name in arrays}
  in_batch = lambda tree, shared=False: jax.tree.map(lambda _: replicated if shared else batch, tree)
  input_specs = (
    {k: in_batch(v, k in shared_inputs) for k, v in inputs.items()} if isinstance(inputs, dict) else in_batch(inputs)
  )

  def local(weights, inputs, z0, arrays):
    device = jax.lax.axis_index(tuple(mesh.axis_names))
    keyed = ("jac_key", "radius_key")  # each device its own draws
    local_arrays = {name: jax.random.fold_in(a, device) if name in keyed else a for name, a in arrays.items()}
    return _cell_output(step, weights, inputs, z0, settings, **options, **local_arrays)

  in_specs = (in_batch(weights, shared=True), input_specs, in_batch(z0), specs)
  # check_vma off: the cotangent of a replicated argument is then summed over the devices (psum).
  run = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=batch, check_vma=False)
  return run(weights, inputs, z0, arrays)


def _cell_output(
  step, weights, inputs, z0, settings: DEQSettings, *, unrolled: bool, training: bool, jac_key=None, settle_iters=0,
  radius_key=None, correct=True, **solver_overrides,
):  # fmt: skip
  """`cell_output` on the devices at hand (one, or those of an enclosing shard_map)."""
  if unrolled and (solver_overrides or radius_key is not None):
    asked = sorted(solver_overrides) + ([] if radius_key is None else ["radius_key"])
    raise TypeError(
      f"An unrolled call applies the cell pretrain_depth={settings.pretrain_depth} times and solves nothing;"
      f" it takes none of {asked} (options of a solve). settle_iters is its own."
    )
  correcting = correct and training and not unrolled and bool(settings.correction_steps)
  if unrolled:
    z, info = solve_cell(step, weights, inputs, z0, unroll_depth=settings.pretrain_depth, settle_iters=settle_iters)
  else:
    options = settings.solver_options(**solver_overrides)
    if correcting:
      options["trajectory_steps"] = settings.correction_steps
    z, info = solve_cell(step, weights, inputs, z0, settle_iters=settle_iters, **options)
  corrections = ()
  if correcting:
    # The kept iterates carry no gradient; one more application of f gives each a one-step phantom gradient.
    corrections = tuple(step(weights, state, inputs) for state in info.states)
    info = info._replace(states=())
  output = step(weights, z, inputs) if settings.feed_fz and training and not unrolled else z
  jac = None if jac_key is None else jacobian_penalty(step, weights, z, inputs, jac_key)
  radius = None
  if radius_key is not None and not unrolled:
    radius = spectral_radius(step, weights, z, inputs, radius_key, num_iter=RADIUS_ITERATIONS, batch_axis=0)
  return z, output, info, CellExtras(jac, corrections, radius)


RADIUS_ITERATIONS = 20  # power iterations of the monitoring estimate (growth averaged over the last 10)


def sub_sequences(length: int, subseq_len: int) -> list[tuple[int, int]]:
  """`[(start, stop)]` of the sub-sequences a segment of `length` positions is solved in."""
  if isinstance(subseq_len, bool) or not isinstance(subseq_len, int) or subseq_len < 0:
    raise ValueError(f"subseq_len must be an int >= 0 (0: the whole segment); got {subseq_len!r}.")
  step = subseq_len or length
  return [(start, min(start + step, length)) for start in range(0, length, step)]


def join_sub_sequences(parts: list[tuple]) -> tuple:
  """One `(z, output, info, extras)` from `cell_output`'s results on consecutive sub-sequences.

  States, outputs and correction outputs are joined along the length (axis 1 of every leaf). The
  solve info sums the steps and keeps, per sample, the worst residuals, status and trace entries of
  the parts; the Jacobian penalty is averaged over positions, the largest spectral radius kept.
  """
  if len(parts) == 1:
    return parts[0]
  zs, outputs, infos, extras = zip(*parts, strict=True)
  jacs = [e.jac_loss for e in extras]
  join = lambda *leaves: jnp.concatenate(leaves, axis=1)
  info = None
  if infos[0] is not None:
    stacked = jax.tree.map(lambda *fields: jnp.stack(fields), *infos)
    info = SolveInfo(
      nstep=jnp.sum(stacked.nstep, axis=0),
      residual=jnp.max(stacked.residual, axis=0),
      rel_residual=jnp.max(stacked.rel_residual, axis=0),
      converged=jnp.all(stacked.converged, axis=0),
      status=jnp.max(stacked.status, axis=0),  # CONVERGED < MAX_STEPS < NONFINITE < DIVERGED
      trace=jnp.max(stacked.trace, axis=0),
    )
  jac = None
  if jacs[0] is not None:
    lengths = [jax.tree.leaves(z)[0].shape[1] for z in zs]
    jac = sum(j * n for j, n in zip(jacs, lengths, strict=True)) / sum(lengths)
  corrections = tuple(jax.tree.map(join, *parts_k) for parts_k in zip(*(e.corrections for e in extras), strict=True))
  radii = [e.spectral_radius for e in extras]
  radius = None if radii[0] is None else jnp.max(jnp.stack(radii), axis=0)
  return jax.tree.map(join, *zs), jax.tree.map(join, *outputs), info, CellExtras(jac, corrections, radius)


def unrolled(step, weights, inputs, z0, depth: int):
  """f applied `depth` times, in a `fori_loop`.

  A static count is a scan under reverse mode. A traced count is a while loop, which cannot be
  reverse-differentiated: give it stop-gradient arguments (as the settle iterations do).
  """
  return jax.lax.fori_loop(0, depth, lambda _, z: step(weights, z, inputs), z0)


def jacobian_penalty(step, weights, z_star, inputs, key: jax.Array) -> jax.Array:
  """Per-sample Hutchinson estimate of ||df/dz||_F^2 / n at the detached equilibrium: `[batch]`.

  The Jacobian regulariser of Bai et al. (2021): the loss adds gamma times its mean. It is
  differentiable in the weights and inputs, n is the state size of one sample, and
  `z_star`'s leaves have the batch on axis 0.
  """
  z = jax.lax.stop_gradient(z_star)
  n = sum(leaf[0].size for leaf in jax.tree.leaves(z))
  return jacobian_frobenius_sq(step, weights, z, inputs, key, batch_axis=0) / n

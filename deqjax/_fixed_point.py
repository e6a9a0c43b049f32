"""`fixed_point` and `root_find`: the public solves, and the custom VJP of the equilibrium."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from deqjax import _validation as checks
from deqjax._driver import Limits, Solver, residual_norm, solve
from deqjax._flat import FlatSpec, make_spec
from deqjax._info import BackwardStats, SolveInfo, Status, backward_probe, stats_from_info
from deqjax._krylov import GMRES, BiCGStab


@dataclasses.dataclass(frozen=True)
class _SolveOptions:
  solver: Solver
  limits: Limits

  @classmethod
  def checked(cls, solver, max_iter, tol, rtol, divergence_ratio, max_growth, stall, prefix=""):
    """Validated options; `stall` = (stall_window, stall_margin); `prefix` ("" or "backward_") names the arguments."""
    tol, rtol = checks.resolve_tolerances(tol, rtol, prefix)
    limits = Limits(
      max_iter=checks.check_max_iter(max_iter, f"{prefix}max_iter"),
      tol=tol,
      rtol=rtol,
      divergence_ratio=_check_divergence_ratio(divergence_ratio),
      max_growth=checks.resolve_max_growth(max_growth, rtol),
      stall_window=stall[0],
      stall_margin=stall[1],
    )
    return cls(checks.resolve_solver(solver, f"{prefix}solver", linear=prefix == "backward_"), limits)

  def check_memory(self, spec: FlatSpec, limit: int | None, name: str) -> None:
    """ValueError when the solver's memory for this state would exceed `limit` bytes (None: no limit).

    The memory is that of `solver.init`'s state (e.g. Broyden's 2 x history x batch x n buffers),
    found by abstract evaluation: nothing is allocated or compiled.
    """
    if limit is None:
      return
    work = jax.ShapeDtypeStruct((spec.batch_size, spec.n), spec.work_dtype)
    state = jax.eval_shape(lambda z, g: self.solver.init(z, g, self.limits.max_iter), work, work)
    size = sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state))
    if size > limit:
      state_shape = f"state [{spec.batch_size}, {spec.n}] {jnp.dtype(spec.work_dtype).name}"
      raise ValueError(
        f"The {name.rstrip('_') or 'forward'} solver's buffers would take {_bytes(size)} ({type(self.solver).__name__},"
        f" {name}max_iter={self.limits.max_iter}, {state_shape}),"
        f" over max_buffer_bytes={limit} ({_bytes(limit)}). Lower {name}max_iter, keep fewer updates"
        " (e.g. solver=deqjax.Broyden(history=...)), or raise max_buffer_bytes (None: no limit)."
      )

  @property
  def krylov(self) -> bool:
    return isinstance(self.solver, (GMRES, BiCGStab))

  def run(self, residual_fn, z0_flat, keep_steps=()):
    return solve(residual_fn, z0_flat, self.solver, self.limits, keep_steps)


@dataclasses.dataclass(frozen=True)
class _Options:
  """Static options of one `_equilibrium` call.

  `root`: False for a fixed point z = fn(params, z, x, *consts), True for a root of
  g(z) = fn(params, z, x, *consts) = 0 (then the map of the solvers is f(z) = z + g(z)).
  """

  root: bool
  forward: _SolveOptions
  backward: str
  backward_solve: _SolveOptions
  phantom_steps: int
  phantom_damping: float
  backward_failure: str
  spec: FlatSpec
  trajectory_steps: tuple[int, ...] = ()


def _squeeze_info(info, batch_axis):
  """Per-system fields of a SolveInfo or BackwardStats: `[1]` -> scalar when there is no batch axis (a
  SolveInfo's kept states are z-shaped already)."""
  if batch_axis is not None:
    return info
  if isinstance(info, SolveInfo):
    return jax.tree.map(lambda a: a[0], info._replace(states=()))._replace(states=info.states)
  return jax.tree.map(lambda a: a[0], info)


def _residual_fn(fn, options: _Options, params, x, consts):
  """The solvers' residual_fn on working matrices: (g, scale) = (f(z) - z, ||f(z)||).

  For a root problem fn is g itself and the scale is that of the implied map, ||z + g(z)||.
  """
  spec = options.spec

  def residual_fn(z_flat):
    out = spec.flatten(fn(params, spec.unflatten(z_flat), x, *consts))
    if options.root:
      return out, residual_norm(z_flat + out)
    return out - z_flat, residual_norm(out)

  return residual_fn


def _forward(fn, options: _Options, params, x, z0, consts):
  spec = options.spec
  residual_fn = _residual_fn(fn, options, params, x, consts)
  z_flat, info = options.forward.run(residual_fn, spec.flatten(z0), options.trajectory_steps)
  if options.trajectory_steps:
    info = info._replace(states=tuple(spec.unflatten(state) for state in info.states))
  return spec.unflatten(z_flat), info


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _equilibrium(fn, options: _Options, params, x, z0, consts, probe):
  del probe
  return _forward(fn, options, params, x, z0, consts)


def _equilibrium_fwd(fn, options, params, x, z0, consts, probe):
  del probe
  z_star, info = _forward(fn, options, params, x, z0, consts)
  # The initial guess is not kept: its gradient is exactly zero.
  return (z_star, info), (params, x, consts, z_star)


def _implicit_backward(fn, options: _Options, params, x, consts, z_star, z_bar):
  # Implicit function theorem. Differentiating z* = f(theta, z*, x) gives
  #   dz* = J dz* + (df/dtheta) dtheta,  J = df/dz at z*,
  # so dz*/dtheta = (I - J)^{-1} df/dtheta and, for a loss l with z_bar = dl/dz*,
  #   dl/dtheta = z_bar^T (I - J)^{-1} df/dtheta = w^T df/dtheta,
  # where w^T = z_bar^T (I - J)^{-1}, i.e. w is the fixed point of
  #   w^T = w^T J + z_bar^T.
  # w^T J is one VJP of f at z*, so the adjoint is solved matrix-free with the
  # same solvers (starting from w = z_bar), and the parameter and input
  # gradients are one more VJP: (theta_bar, x_bar) = w^T df/d(theta, x).
  #
  # A root z* of g(theta, z*, x) = 0 the same way: G dz* + (dg/dtheta) dtheta = 0, G = dg/dz at
  # z*, so dl/dtheta = -z_bar^T G^{-1} dg/dtheta = u^T dg/dtheta with G^T u = -z_bar, i.e. u is
  # the root of r(u) = G^T u + z_bar (one VJP of g), found from u = z_bar by the same solvers
  # (for g = f - z, G^T u + z_bar = J^T w + z_bar - w: the adjoint above, so u = w).
  spec = options.spec
  # One linearisation of f at z* serves the adjoint solve (z part) and the final
  # input gradients, so one layer's activations are stored, once.
  _, vjp_f = jax.vjp(lambda p, z, xx, c: fn(p, z, xx, *c), params, z_star, x, consts)
  z_bar_flat = spec.flatten(z_bar)

  def transposed_jacobian(w_flat):  # w -> J^T w (G^T w for a root): one VJP
    # The other cotangents are dead code inside the loop.
    return spec.flatten(vjp_f(spec.unflatten(w_flat))[1])

  def residual_fn(w_flat):
    h = transposed_jacobian(w_flat) + z_bar_flat
    if options.root:
      return h, residual_norm(w_flat + h)
    return h - w_flat, residual_norm(h)

  solve_options = options.backward_solve
  if solve_options.krylov:
    # The same system as a linear one, A w = z_bar: A w = w - J^T w (A u = -G^T u for a root), so
    # that z_bar - A w is the residual above.
    if options.root:
      matvec = lambda v: -transposed_jacobian(v)
    else:
      matvec = lambda v: v - transposed_jacobian(v)
    w_flat, info = solve_options.solver.solve_linear(matvec, z_bar_flat, z_bar_flat, solve_options.limits)
  else:
    w_flat, info = solve_options.run(residual_fn, z_bar_flat)
  w_flat = _failed_rows(options, info, w_flat, z_bar_flat, transposed_jacobian)
  params_bar, _, x_bar, consts_bar = vjp_f(spec.unflatten(w_flat))
  return params_bar, x_bar, consts_bar, stats_from_info(info)


def _failed_rows(options: _Options, info: SolveInfo, w_flat, z_bar_flat, transposed_jacobian):
  """The adjoint `[batch, n]` after `options.backward_failure` acts on the rows whose solve did not converge.

  "keep": a row that reached its cap (or stalled) keeps its inexact best iterate; one that diverged
  or turned non-finite is no gradient at all and becomes NaN (so are the parameter gradients it
  enters), where its best iterate would be a finite, wrong gradient. "drop": every unconverged row
  becomes 0 (that sample's gradient through z* is dropped). "phantom": every unconverged row becomes
  the phantom gradient's adjoint, the k damped steps linearised at z*:
      w = lam sum_{j<k} M^j z_bar,   M = (1 - lam) I + lam J^T   (I + lam G^T for a root),
  since differentiating z_k = (1 - lam) z_{k-1} + lam f(z_{k-1}) (z_0 = z* held) gives
  dz_k = M^T dz_{k-1} + lam df/dtheta dtheta. For k = 1 it is exactly `backward="phantom"`'s gradient
  (lam z_bar^T df/dtheta, the Jacobian-free one); for k > 1 the unrolled phantom evaluates J at the
  iterates z_j, this at z* (equal for a map linear in z). Its k - 1 VJPs run only when a row failed.
  """
  converged = (info.status == Status.CONVERGED)[:, None]
  if options.backward_failure == "keep":
    failed = (info.status == Status.DIVERGED) | (info.status == Status.NONFINITE)
    return jnp.where(failed[:, None], jnp.nan, w_flat)
  if options.backward_failure == "drop":
    return jnp.where(converged, w_flat, 0)
  lam = options.phantom_damping

  def phantom_adjoint():
    def term(_, carry):  # (M^j z_bar, sum_{i<=j} M^i z_bar) -> the same for j + 1
      power, total = carry
      jt = transposed_jacobian(power)
      power = power + lam * jt if options.root else (1 - lam) * power + lam * jt
      return power, total + power

    _, total = jax.lax.fori_loop(0, options.phantom_steps - 1, term, (z_bar_flat, z_bar_flat))
    return jnp.where(converged, w_flat, lam * total)

  return jax.lax.cond(jnp.all(converged), lambda: w_flat, phantom_adjoint)


def _phantom_backward(fn, options: _Options, params, x, consts, z_star, z_bar):
  # Phantom gradient: differentiate k damped steps z <- (1 - lam) z + lam f(z)
  # started from z* (held constant). k = 1, lam = 1 is the one-step
  # (Jacobian-free) gradient z_bar^T df/dtheta at z*. For a root of g the step
  # is z <- z + lam g(z) (the same step for the implied map f(z) = z + g(z)).
  lam = options.phantom_damping

  def damped_step(z, p, xx, c):
    out = fn(p, z, xx, *c)
    if options.root:
      return jax.tree.map(lambda a, b: a + lam * b, z, out)
    return jax.tree.map(lambda a, b: (1 - lam) * a + lam * b, z, out) if lam != 1 else out

  def unrolled(p, xx, c):
    # A static trip count: a scan under reverse mode, compiled once whatever phantom_steps is.
    return jax.lax.fori_loop(0, options.phantom_steps, lambda _, z: damped_step(z, p, xx, c), z_star)

  _, vjp_inputs = jax.vjp(unrolled, params, x, consts)
  params_bar, x_bar, consts_bar = vjp_inputs(z_bar)
  batch = options.spec.batch_size
  zeros = jnp.zeros((batch,), jnp.float32)
  stats = BackwardStats(
    nstep=zeros, residual=zeros, rel_residual=zeros, converged=zeros + 1.0, status=zeros + float(Status.CONVERGED)
  )
  return params_bar, x_bar, consts_bar, stats


def _equilibrium_bwd(fn, options: _Options, residuals, cotangents):
  params, x, consts, z_star = residuals
  z_bar, _ = cotangents
  backward = _implicit_backward if options.backward == "implicit" else _phantom_backward
  params_bar, x_bar, consts_bar, stats = backward(fn, options, params, x, consts, z_star, z_bar)
  stats = _squeeze_info(stats, options.spec.batch_axis)
  z0_bar = jax.tree.map(jnp.zeros_like, z_star)
  return params_bar, x_bar, z0_bar, consts_bar, stats


_equilibrium.defvjp(_equilibrium_fwd, _equilibrium_bwd)


def fixed_point(
  f: Callable[[Any, Any, Any], Any],
  params: Any,
  x: Any,
  z0: Any = None,
  *,
  solver: str | Solver = "broyden",
  max_iter: int = 30,
  tol: float | None = None,
  rtol: float | None = None,
  batch_axis: int | None = None,
  divergence_ratio: float = 1e6,
  max_growth: float | None = None,
  stall_window: int | None = None,
  stall_margin: float = 0.0,
  backward: str = "implicit",
  backward_solver: str | Solver | None = None,
  backward_max_iter: int = 40,
  backward_tol: float | None = None,
  backward_rtol: float | None = None,
  phantom_steps: int = 1,
  phantom_damping: float = 1.0,
  backward_failure: str = "keep",
  backward_probe: BackwardStats | None = None,
  max_buffer_bytes: int | None = 2**34,
  has_aux: bool = False,
  trajectory_steps: tuple[int, ...] = (),
) -> tuple[Any, SolveInfo] | tuple[Any, Any, SolveInfo]:
  r"""Finds z* = f(params, z*, x) and differentiates it implicitly.

  .. math::
     z^\star = f_\theta(z^\star; x), \qquad
     \frac{d\ell}{d\theta} = w^\top \frac{\partial f}{\partial \theta}, \quad
     w^\top = w^\top \frac{\partial f}{\partial z}\Big|_{z^\star} + \frac{\partial \ell}{\partial z^\star}.

  The forward pass runs a solver inside one `lax.while_loop`; nothing from its
  iterations is kept for the backward pass, so training memory is that of one
  application of f. The initial guess `z0` receives an exactly zero gradient.

  Args:
    f: `f(params, z, x) -> z_next` with the structure, shapes and dtypes of `z`.
      Values it closes over are differentiated too (they are hoisted into
      explicit arguments by `jax.closure_convert`).
    params: pytree of parameters (differentiated).
    x: pytree input injection (differentiated).
    z0: initial state; None means zeros shaped like `x` (pass `z0` whenever
      the state differs from `x`). Floating-point leaves only.
    solver: "broyden" (limited-memory good Broyden, lowest-residual iterate
      returned), "anderson", "iteration", or an instance such as
      `deqjax.Broyden(history=10)`.
    max_iter: forward step cap (>= 1); always bounds the work.
    tol: absolute tolerance on ||f(z) - z||_2 (per sample with `batch_axis`).
    rtol: relative tolerance on ||f(z) - z||_2 / ||f(z)||_2. A system has
      converged when its residual < tol + rtol * ||f(z)||_2 (or is exactly 0).
      What is set is what applies: neither set means tol=1e-6, rtol=1e-4;
      only one set means the other is 0 (`tol=1e-13` alone is a purely
      absolute test).
    batch_axis: None solves the whole state as one system (one stopping rule,
      one low-rank estimate). An int k treats index i along axis k of every
      leaf of the state as an independent system: own low-rank estimate,
      own residual, own stopping and own best iterate per sample, as the
      reference implementation does. f itself is always called on the full
      batch; it must not mix samples for the per-sample solve to be exact.
    divergence_ratio: a residual above this multiple of the initial residual
      stops the system with status DIVERGED.
    max_growth: the run-away bound. An iterate whose scale ||f(z)|| exceeds
      max_growth x max(||f(z0)||, ||z0||) is neither converged nor returned
      (the solve goes on; a run-away ends at the cap as MAX_STEPS with the
      best iterate within the bound), so growth alone never passes a test.
      None: min(0.1 / rtol, 1e6) (a relative convergence needs a residual
      under a tenth of the start's scale); `float("inf")`: no bound. Applies
      to the adjoint solve too (with its own rtol when None).
    stall_window: stall detection (None: off). A system whose residual has
      not fallen below (1 - stall_margin) x its residual at its last such
      progress for `stall_window` steps stops with status STALLED (its best
      iterate returned); `max_iter` still caps. Applies to the adjoint solve
      too (the fixed-point solvers; GMRES and BiCGStab ignore it).
    stall_margin: the relative decrease that counts as progress, in [0, 1).
    backward: "implicit" (solve the adjoint fixed point) or "phantom" (damped
      unrolled steps from z*).
    backward_solver: solver of the adjoint system; None uses `solver`.
    backward_max_iter: step cap of the adjoint solve (>= 1).
    backward_tol: absolute tolerance of the adjoint solve.
    backward_rtol: relative tolerance of the adjoint solve (the same rule as
      `tol` / `rtol`; the scale is ||w^T J + z_bar||).
    phantom_steps: number of unrolled steps k of the phantom backward (>= 1).
    phantom_damping: damping lam in (0, 1] of the phantom steps.
    backward_failure: what the implicit backward does with a sample whose
      adjoint solve did not converge (its status in `backward_probe` says
      so either way): "keep" its inexact best iterate (a diverged or
      non-finite adjoint gives NaN gradients), "phantom" (use the phantom
      gradient of `phantom_steps` / `phantom_damping` steps, linearised at
      z*, for that sample) or "drop" (no gradient through z* from it).
    backward_probe: optional `deqjax.backward_probe(...)`; the gradient with
      respect to it is the `BackwardStats` of the backward pass.
    max_buffer_bytes: the most memory a solver's state may take (16 GiB by
      default; None: no limit); a larger one (e.g. Broyden's 2 x max_iter x
      batch x n buffers with a huge cap) is a ValueError before compiling.
    has_aux: `f` returns `(z_next, aux)`; the solve iterates on `z_next`, and
      `aux` is evaluated once more at the returned z* (one extra call of f),
      differentiable through z* (implicitly) and through params and x.
    trajectory_steps: step counts (increasing, each in 1..max_iter) whose
      iterates are handed out as `info.states` (a tuple of z-shaped states,
      detached: no gradient flows through them), e.g. for the fixed-point
      correction loss of Bai et al. (2022), which applies the loss to
      f(params, stop_gradient(state), x). One buffer per count is kept, not
      the trajectory; a system that stopped earlier gives its returned z*.

  Returns:
    `(z_star, info)`: the equilibrium, shaped like `z0`, and a `SolveInfo`
    (scalars, or `[batch]` fields when `batch_axis` is set); with `has_aux`,
    `(z_star, aux, info)`.

  Raises:
    ValueError / TypeError at trace time for unknown solver or backward names,
    bad caps or tolerances, an `f` whose output differs from `z` in
    structure, shape or dtype, and forward-mode differentiation.

  Example:
    >>> import jax, jax.numpy as jnp, deqjax
    >>> f = lambda a, z, x: a * jnp.tanh(z) + x
    >>> z, info = deqjax.fixed_point(f, 0.5, jnp.ones(3), tol=1e-5, rtol=0.0)
    >>> bool(info.converged), bool(jnp.allclose(z, 0.5 * jnp.tanh(z) + 1, atol=1e-5))
    (True, True)
    >>> grad = jax.grad(lambda a: deqjax.fixed_point(f, a, jnp.ones(3))[0].sum())(0.5)
  """
  forward, backward_options = _solve_options(
    solver, max_iter, tol, rtol, divergence_ratio, max_growth, (stall_window, stall_margin),
    backward, backward_solver, backward_max_iter, backward_tol, backward_rtol, phantom_steps, phantom_damping,
    backward_failure,
  )  # fmt: skip
  batch_axis = checks.check_batch_axis(batch_axis)
  if not isinstance(has_aux, bool):
    raise TypeError(f"has_aux must be a bool; got has_aux={has_aux!r}.")

  if z0 is None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        raise TypeError(
          f"z0=None means zeros shaped like x, but x{jax.tree_util.keystr(path)} has dtype"
          f" {jnp.result_type(leaf)} (shape {jnp.shape(leaf)}); pass a floating-point z0."
        )
    z0 = jax.tree.map(jnp.zeros_like, x)
  spec = make_spec(z0, batch_axis, "z0")
  _check_memory(forward, backward_options, spec, max_buffer_bytes)
  step = _without_aux(f, params, z0, x) if has_aux else f
  checks.check_same_structure(jax.eval_shape(step, params, z0, x), z0, "f(params, z, x)", "z0")
  checks.reject_forward_mode(params, x, z0)

  probe = _check_probe(backward_probe, spec)
  fn, consts = jax.closure_convert(step, params, z0, x)
  checks.reject_forward_mode(consts)
  trajectory_steps = checks.check_trajectory_steps(trajectory_steps, forward.limits.max_iter)
  options = _Options(False, forward, *backward_options, spec, trajectory_steps)
  z_star, info = _equilibrium(fn, options, params, x, z0, consts, probe)
  if has_aux:
    # Outside the custom VJP: aux's gradient flows through z* (implicitly) and through f directly.
    return z_star, f(params, z_star, x)[1], _squeeze_info(info, batch_axis)
  return z_star, _squeeze_info(info, batch_axis)


def _solve_options(
  solver, max_iter, tol, rtol, divergence_ratio, max_growth, stall,
  backward, backward_solver, backward_max_iter, backward_tol, backward_rtol, phantom_steps, phantom_damping,
  backward_failure,
):  # fmt: skip
  """The validated forward `_SolveOptions` and the backward fields of `_Options`."""
  stall = checks.check_stall(*stall)
  forward = _SolveOptions.checked(solver, max_iter, tol, rtol, divergence_ratio, max_growth, stall)
  checks.check_backward_options(backward, phantom_steps, phantom_damping, backward_failure)
  backward_solve = _SolveOptions.checked(
    solver if backward_solver is None else backward_solver,
    backward_max_iter,
    backward_tol,
    backward_rtol,
    divergence_ratio,
    max_growth,
    stall,
    prefix="backward_",
  )
  return forward, (backward, backward_solve, phantom_steps, float(phantom_damping), backward_failure)


def _check_memory(forward: _SolveOptions, backward_options, spec: FlatSpec, max_buffer_bytes) -> None:
  limit = _check_limit(max_buffer_bytes)
  forward.check_memory(spec, limit, "")
  backward, backward_solve = backward_options[:2]
  if backward == "implicit":
    backward_solve.check_memory(spec, limit, "backward_")


def _without_aux(f, params, z0, x):
  """f's first output, after checking that f returns a pair (z_next, aux)."""
  out = jax.eval_shape(f, params, z0, x)
  if not (isinstance(out, tuple) and len(out) == 2):
    if isinstance(out, tuple):
      kind = f"a tuple of {len(out)}"
    else:
      kind = f"one array {out.shape}" if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
    raise TypeError(f"has_aux=True: f(params, z, x) must return a pair (z_next, aux); it returns {kind}.")
  return lambda p, z, xx: f(p, z, xx)[0]


def _bytes(size: int) -> str:
  return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size:,} bytes"


def _check_limit(value) -> int | None:
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
    raise ValueError(f"max_buffer_bytes must be None (no limit) or an int >= 1; got max_buffer_bytes={value!r}.")
  return value


def _check_divergence_ratio(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
    raise ValueError(f"divergence_ratio must be a number > 1; got divergence_ratio={value!r}.")
  return float(value)


def _check_probe(probe, spec: FlatSpec) -> BackwardStats:
  expected = () if spec.batch_axis is None else (spec.batch_size,)
  if probe is None:
    return backward_probe(None if spec.batch_axis is None else spec.batch_size)
  if not isinstance(probe, BackwardStats):
    raise TypeError(f"backward_probe must come from deqjax.backward_probe(...); got {type(probe).__name__}.")
  for name, leaf in zip(BackwardStats._fields, probe, strict=True):
    if jnp.shape(leaf) != expected or jnp.result_type(leaf) != jnp.float32:
      raise ValueError(
        f"backward_probe.{name} must be float32 with shape {expected} (batch_axis={spec.batch_axis});"
        f" got {jnp.result_type(leaf)} {jnp.shape(leaf)}."
      )
  return probe


def root_find(
  g: Callable[[Any], Any],
  z0: Any,
  *,
  solver: str | Solver = "broyden",
  max_iter: int = 30,
  tol: float | None = None,
  rtol: float | None = None,
  batch_axis: int | None = None,
  divergence_ratio: float = 1e6,
  max_growth: float | None = None,
  stall_window: int | None = None,
  stall_margin: float = 0.0,
  backward: str = "implicit",
  backward_solver: str | Solver | None = None,
  backward_max_iter: int = 40,
  backward_tol: float | None = None,
  backward_rtol: float | None = None,
  phantom_steps: int = 1,
  phantom_damping: float = 1.0,
  backward_failure: str = "keep",
  backward_probe: BackwardStats | None = None,
  max_buffer_bytes: int | None = 2**34,
  trajectory_steps: tuple[int, ...] = (),
) -> tuple[Any, SolveInfo]:
  r"""Finds z with g(z) = 0 and differentiates the root implicitly.

  .. math::
     g_\theta(z^\star) = 0, \qquad
     \frac{d\ell}{d\theta} = u^\top \frac{\partial g}{\partial \theta}, \quad
     \frac{\partial g}{\partial z}\Big|_{z^\star}^\top u = -\frac{\partial \ell}{\partial z^\star}.

  The solvers start from the inverse-Jacobian guess -I, i.e. they assume
  dg/dz is near -I, as for g(z) = f(z) - z; rescale or negate g otherwise.
  The relative residual is ||g(z)|| / ||z + g(z)|| (that of the implied map
  f(z) = z + g(z)). Reverse-mode gradients flow to every value g closes over
  (hoisted by `jax.closure_convert`), with the same backward options as
  `fixed_point`: the adjoint u is the root of G^T u + z_bar, G = dg/dz at the
  root, found by the solvers from u = z_bar; "phantom" differentiates k steps
  z <- z + lam g(z) from the root. `z0` receives an exactly zero gradient.

  Args:
    g: `g(z) -> residual` with the structure, shapes and dtypes of `z`.
    z0: initial guess (pytree of floating arrays).
    solver, max_iter, tol, rtol, batch_axis, divergence_ratio, max_growth,
      stall_window, stall_margin, backward, backward_solver,
      backward_max_iter, backward_tol, backward_rtol, phantom_steps,
      phantom_damping, backward_failure, backward_probe, max_buffer_bytes,
      trajectory_steps: as for `fixed_point` (the scales of the relative tests being ||z + g(z)||
      and ||u + r(u)||).

  Returns:
    `(z, info)`: the lowest-residual iterate (or the converged one) and its
    `SolveInfo`.

  Example:
    >>> import jax, jax.numpy as jnp, deqjax
    >>> cube_root = lambda c: deqjax.root_find(lambda z: (c - z**3) / 3, jnp.ones(()), tol=1e-12)[0]
    >>> round(float(cube_root(8.0)), 6), round(float(jax.grad(cube_root)(8.0)), 6)  # 1 / (3 c^(2/3))
    (2.0, 0.083333)
  """
  forward, backward_options = _solve_options(
    solver, max_iter, tol, rtol, divergence_ratio, max_growth, (stall_window, stall_margin),
    backward, backward_solver, backward_max_iter, backward_tol, backward_rtol, phantom_steps, phantom_damping,
    backward_failure,
  )  # fmt: skip
  batch_axis = checks.check_batch_axis(batch_axis)
  spec = make_spec(z0, batch_axis, "z0")
  _check_memory(forward, backward_options, spec, max_buffer_bytes)
  checks.check_same_structure(jax.eval_shape(g, z0), z0, "g(z)", "z0")
  checks.reject_forward_mode(z0)

  probe = _check_probe(backward_probe, spec)
  g_converted, consts = jax.closure_convert(g, z0)
  checks.reject_forward_mode(consts)
  fn = functools.partial(_root_map, g_converted)
  trajectory_steps = checks.check_trajectory_steps(trajectory_steps, forward.limits.max_iter)
  options = _Options(True, forward, *backward_options, spec, trajectory_steps)
  z, info = _equilibrium(fn, options, (), (), z0, consts, probe)
  return z, _squeeze_info(info, batch_axis)


def _root_map(g_converted, params, z, x, *consts):
  """`g` in the `fn(params, z, x, *consts)` form of `_equilibrium` (params and x are empty)."""
  del params, x
  return g_converted(z, *consts)

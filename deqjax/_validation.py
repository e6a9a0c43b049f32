"""Trace-time checks with messages that name the argument and the shapes."""

from __future__ import annotations

import math

import jax

from deqjax._anderson import Anderson
from deqjax._broyden import Broyden
from deqjax._iteration import Iteration
from deqjax._krylov import KRYLOV

SOLVERS = {"broyden": Broyden, "anderson": Anderson, "iteration": Iteration}


def resolve_solver(solver, name: str, linear: bool = False):
  """A solver name or an object following `deqjax.Solver` -> the object.

  Built-in and user-written solvers pass the same test: callable `init`, `direction` and
  `update`, and hashable (the solver is a static option of the compiled solve). With `linear`
  (the adjoint solve) the Krylov solvers "gmres" / "bicgstab" (or `deqjax.GMRES(...)`,
  `deqjax.BiCGStab()`) are accepted too.
  """
  names = sorted(SOLVERS) + (sorted(KRYLOV) if linear else [])
  krylov_classes = tuple(KRYLOV.values())
  if isinstance(solver, str):
    if solver in KRYLOV and not linear:
      raise ValueError(
        f"{name}={solver!r} solves linear systems only: pass it as backward_solver (the adjoint solve); the"
        f" forward solve takes one of {sorted(SOLVERS)}."
      )
    if solver not in names:
      raise ValueError(f"Unknown {name}={solver!r}; expected one of {names} or a solver instance.")
    return {**SOLVERS, **KRYLOV}[solver]()
  if isinstance(solver, krylov_classes):
    if not linear:
      raise ValueError(
        f"{name}={type(solver).__name__}(...) solves linear systems only: pass it as backward_solver (the adjoint"
        " solve)."
      )
    return solver
  missing = [m for m in ("init", "direction", "update") if not callable(getattr(solver, m, None))]
  if missing:
    raise TypeError(
      f"{name} must be one of {names} or an object with the deqjax.Solver methods init, direction and"
      f" update; got {type(solver).__name__}, which lacks {missing}."
    )
  try:
    hash(solver)
  except TypeError:
    raise TypeError(
      f"{name}={type(solver).__name__}(...) must be hashable (it is a static option of the compiled solve);"
      " make it a frozen dataclass, for example."
    ) from None
  return solver


BACKWARDS = ("implicit", "phantom")
BACKWARD_FAILURES = ("keep", "phantom", "drop")


def check_backward_options(
  backward: str, phantom_steps: int, phantom_damping: float, backward_failure: str = "keep"
) -> None:
  """The checks `fixed_point` makes of its gradient options (callable early, e.g. by a config check)."""
  if backward not in BACKWARDS:
    raise ValueError(f"Unknown backward={backward!r}; expected one of {list(BACKWARDS)}.")
  check_max_iter(phantom_steps, "phantom_steps")
  if not 0 < phantom_damping <= 1:
    raise ValueError(f"phantom_damping must be in (0, 1]; got phantom_damping={phantom_damping!r}.")
  if backward_failure not in BACKWARD_FAILURES:
    raise ValueError(f"Unknown backward_failure={backward_failure!r}; expected one of {list(BACKWARD_FAILURES)}.")
  if backward == "phantom" and backward_failure != "keep":
    raise ValueError(
      f"backward_failure={backward_failure!r} is a policy for failed adjoint solves, and backward='phantom' solves"
      " none; use backward='implicit' or backward_failure='keep'."
    )


def check_max_iter(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be a Python int; got {value!r} of type {type(value).__name__}.")
  if value < 1:
    raise ValueError(f"{name} must be >= 1; got {name}={value}.")
  return value


def check_tolerance(value, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"{name} must be a Python float; got {value!r} of type {type(value).__name__}.")
  if not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"{name} must be a finite number >= 0; got {name}={value}.")
  return float(value)


DEFAULT_TOL = 1e-6
DEFAULT_RTOL = 1e-4


def resolve_tolerances(tol, rtol, prefix: str = "") -> tuple[float, float]:
  """The (absolute, relative) tolerances a solve stops on, by one rule: what is set is what applies.

  Neither set (both None): the defaults, tol 1e-6 + rtol 1e-4 * ||f(z)||. Only one set: that one
  alone (the other is 0), so `tol=1e-13` means ||f(z) - z|| < 1e-13 and is not loosened by a
  default relative tolerance. Both set: a system stops when residual < tol + rtol * ||f(z)||.
  `prefix` ("" or "backward_") names the arguments in errors.
  """
  if tol is None and rtol is None:
    return DEFAULT_TOL, DEFAULT_RTOL
  tol = 0.0 if tol is None else check_tolerance(tol, f"{prefix}tol")
  rtol = 0.0 if rtol is None else check_tolerance(rtol, f"{prefix}rtol")
  return tol, rtol


def resolve_max_growth(max_growth, rtol: float) -> float:
  """The run-away bound on a system's scale ||f(z)||, as a multiple of its start's; inf for none.

  None: the smaller of 0.1 / rtol and 1e6. Within 0.1 / rtol a relative convergence needs a residual
  below a tenth of the start's scale (real progress, not growth); 1e6 bounds an absolute test,
  which a far enough run-away also passes once f(z) - z rounds to 0.
  """
  if max_growth is None:
    return min(0.1 / rtol, 1e6) if rtol > 0 else 1e6
  if isinstance(max_growth, bool) or not isinstance(max_growth, (int, float)) or not max_growth > 1:
    raise ValueError(
      f"max_growth must be None (automatic) or a number > 1 (inf: no bound); got max_growth={max_growth!r}."
    )
  return float(max_growth)


def check_stall(window, margin) -> tuple[int, float]:
  """(stall_window, stall_margin) for the driver: window 0 means off (None)."""
  if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
    raise ValueError(f"stall_window must be None (off) or an int >= 1; got stall_window={window!r}.")
  if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
    raise ValueError(f"stall_margin must be a number in [0, 1); got stall_margin={margin!r}.")
  return (0 if window is None else window), float(margin)


def check_batch_axis(value) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"batch_axis must be None or a non-negative int; got {value!r}.")
  if value < 0:
    raise ValueError(f"batch_axis must be None or a non-negative int; got batch_axis={value}.")
  return value


def _describe(tree) -> str:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ", ".join(f"{jax.tree_util.keystr(p) or '<root>'}: {tuple(leaf.shape)} {leaf.dtype}" for p, leaf in leaves)


def check_same_structure(out, like, fn_name: str, like_name: str) -> None:
  """`out` (from eval_shape) must match `like` in structure, shapes and dtypes."""
  out_def = jax.tree.structure(out)
  like_def = jax.tree.structure(like)
  if out_def != like_def:
    raise TypeError(
      f"{fn_name} must return a pytree with the structure of {like_name}; {like_name} is"
      f" {like_def} but it returned {out_def}."
    )
  paths = jax.tree_util.tree_flatten_with_path(like)[0]
  for (path, want), got in zip(paths, jax.tree.leaves(out), strict=True):
    where = jax.tree_util.keystr(path)
    want_shape, want_dtype = tuple(jax.numpy.shape(want)), jax.numpy.result_type(want)
    if tuple(got.shape) != want_shape:
      raise ValueError(
        f"{fn_name} returned shape {tuple(got.shape)} for {like_name}{where}, whose shape is"
        f" {want_shape}. ({like_name}: {_describe(jax.eval_shape(lambda t: t, like))};"
        f" returned: {_describe(out)}.)"
      )
    if got.dtype != want_dtype:
      raise TypeError(
        f"{fn_name} returned dtype {got.dtype} for {like_name}{where}, whose dtype is"
        f" {want_dtype} (shape {want_shape}); cast the output of f to the state's dtype."
      )


def reject_forward_mode(*trees) -> None:
  """Raises a helpful TypeError when traced by forward-mode autodiff.

  `jax.custom_vjp` functions cannot be differentiated in forward mode. JAX
  would raise later with a generic message; this names the alternatives.
  Reverse mode traces with linearize tracers, forward mode with JVP
  tracers; the check only applies where JAX linearizes directly (otherwise
  the two are indistinguishable and JAX's own error stands).
  """
  if not getattr(jax.config, "jax_use_direct_linearize", False):
    return
  for leaf in jax.tree.leaves(trees):
    tracer = leaf
    while isinstance(tracer, jax.core.Tracer):
      if type(tracer).__name__ == "JVPTracer":
        raise TypeError(
          "deqjax.fixed_point does not support forward-mode differentiation (jax.jvp,"
          " jax.jacfwd, jax.hessian): its derivative is a custom VJP (implicit or phantom"
          " backward). Use reverse mode instead: jax.grad, jax.vjp, jax.jacrev."
        )
      tracer = getattr(tracer, "primal", getattr(tracer, "val", None))


def check_trajectory_steps(steps, max_iter: int, name: str = "trajectory_steps") -> tuple[int, ...]:
  """`steps` as a tuple of increasing ints in 1..max_iter; TypeError / ValueError naming it as `name`."""
  if not isinstance(steps, (tuple, list)) or any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
    raise TypeError(f"{name} must be a tuple of Python ints; got {name}={steps!r}.")
  steps = tuple(steps)
  if any(not 1 <= s <= max_iter for s in steps) or any(a >= b for a, b in zip(steps[:-1], steps[1:], strict=True)):
    raise ValueError(f"{name} must increase and lie in 1..max_iter={max_iter}; got {name}={steps!r}.")
  return steps

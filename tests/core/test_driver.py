"""deqjax._driver: the solve loop's stopping rules per sample, under vmap, with caps, NaN and divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import SOLVERS, contractive_matrix, linear

import deqjax
from deqjax import Status


# ---------------------------------------------------------------------------
# Composition: jit, vmap, grad, sequences, scan, closures
# ---------------------------------------------------------------------------
def test_vmap_gives_per_sample_stopping_and_matches_single_solves():
  # Near z* ~ 0 the map contracts at rate ~ s: steps grow with s.
  scales = jnp.array([0.1, 0.5, 0.9])
  x = jnp.full((3, 4), 0.01)
  f = lambda s, z, x: s * jnp.tanh(z) + x

  solve = lambda s, x: deqjax.fixed_point(
    f,
    s,
    x,
    jnp.ones_like(x),
    solver="iteration",
    max_iter=500,
    tol=1e-10,
    rtol=0.0,
    backward_max_iter=500,
    backward_tol=1e-13,
    backward_rtol=0.0,
  )
  z, info = jax.jit(jax.vmap(solve))(scales, x)
  steps = [int(s) for s in info.nstep]
  assert steps[0] < steps[1] < steps[2]  # slower contraction, more steps, each its own count
  for i in range(3):
    z_i, info_i = solve(scales[i], x[i])
    np.testing.assert_allclose(z[i], z_i, atol=1e-12)
    assert int(info_i.nstep) == steps[i]

  grad = jax.grad(lambda s: jnp.sum(jax.vmap(solve)(s, x)[0]))(scales)
  # d z*/ds for z = s tanh(z) + x: tanh(z*) / (1 - s sech^2(z*)), per sample.
  zs = z[:, 0]
  expected = 4 * jnp.tanh(zs) / (1 - scales / jnp.cosh(zs) ** 2)
  np.testing.assert_allclose(grad, expected, rtol=1e-7)


@pytest.mark.parametrize("solver", SOLVERS)
def test_batch_axis_solves_each_sample_on_its_own(solver):
  # Sample i contracts with factor s_i; the per-sample solve matches separate solves.
  scales = jnp.array([0.05, 0.5, 0.8, 0.95])[:, None, None]
  x = jax.random.normal(jax.random.key(12), (3, 4, 5))  # batch on axis 1
  f = lambda s, z, x: jnp.swapaxes(s * jnp.tanh(jnp.swapaxes(z, 0, 1)), 0, 1) + x
  kw = dict(solver=solver, max_iter=200, tol=1e-10, rtol=0.0)
  z, info = deqjax.fixed_point(f, scales, x, batch_axis=1, **kw)
  assert info.nstep.shape == (4,) and info.trace.shape == (4, 201)
  assert bool(jnp.all(info.converged))
  for i in range(4):
    f_i = lambda s, z, x: s * jnp.tanh(z) + x
    z_i, info_i = deqjax.fixed_point(f_i, scales[i], x[:, i], **kw)
    np.testing.assert_allclose(z[:, i], z_i, atol=1e-9)
    np.testing.assert_allclose(info.residual[i], info_i.residual, rtol=1e-6, atol=1e-14)
  assert int(info.nstep[0]) < int(info.nstep[3])
  # Entries after a sample stopped are -1; entry 0 is the initial residual.
  for i in range(4):
    k = int(info.nstep[i])
    assert bool(jnp.all(info.trace[i, k + 1 :] == -1.0)) and bool(jnp.all(info.trace[i, : k + 1] >= 0))


def test_one_failing_sample_does_not_abort_the_batch():
  # Sample 1 produces NaN; the others converge and keep their answers.
  x = jnp.array([[0.5], [jnp.nan], [1.0]])
  f = lambda _, z, x: 0.5 * jnp.tanh(z) + x
  z, info = deqjax.fixed_point(f, None, x, batch_axis=0, tol=1e-10, rtol=0.0, max_iter=50)
  assert [int(s) for s in info.status] == [Status.CONVERGED, Status.NONFINITE, Status.CONVERGED]
  np.testing.assert_allclose(z[0], f(None, z[0], x[0]), atol=1e-9)
  np.testing.assert_allclose(z[2], f(None, z[2], x[2]), atol=1e-9)


# ---------------------------------------------------------------------------
# Reporting: step cap, NaN, divergence, backward statistics
# ---------------------------------------------------------------------------
def test_step_cap_is_reported_and_bounds_work():
  a = contractive_matrix(jax.random.key(16), 20, radius=0.99)
  z, info = deqjax.fixed_point(linear, a, jnp.ones(20), solver="iteration", max_iter=7, tol=1e-12, rtol=0.0)
  assert int(info.status) == Status.MAX_STEPS and not bool(info.converged)
  assert int(info.nstep) == 7
  assert bool(jnp.all(info.trace >= 0))
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(linear(a, z, jnp.ones(20)) - z), rtol=1e-10)
  np.testing.assert_allclose(info.rel_residual, info.residual / jnp.linalg.norm(linear(a, z, jnp.ones(20))), rtol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_stops_and_is_never_converged(solver):
  # f is finite for |z| < 1.5 and NaN outside; its fixed point z* = 3 lies outside.
  f = lambda _, z, x: jnp.where(jnp.abs(z) < 1.5, 2.0 * z + x, jnp.nan)
  x = jnp.array([-3.0, -3.0])
  z, info = deqjax.fixed_point(f, None, x, solver=solver, max_iter=50, tol=0.0, rtol=0.0, divergence_ratio=1e12)
  assert int(info.status) == Status.NONFINITE
  assert not bool(info.converged)
  assert bool(jnp.all(z == 0.0))  # the best finite iterate (here z0) comes back
  assert int(info.nstep) == 1
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(f(None, z, x) - z), rtol=1e-12)


def test_nan_input_is_reported_at_once():
  z, info = deqjax.fixed_point(lambda _, z, x: 0.5 * z + x, None, jnp.array([1.0, jnp.nan]))
  assert int(info.status) == Status.NONFINITE and int(info.nstep) == 0 and not bool(info.converged)


def test_divergence_is_reported():
  f = lambda _, z, x: 3.0 * z + x
  # The residual-growth rule alone (no run-away bound on the scale).
  kw = dict(solver="iteration", max_iter=100, divergence_ratio=1e3, max_growth=float("inf"))
  _, info = deqjax.fixed_point(f, None, jnp.ones(4), **kw)
  assert int(info.status) == Status.DIVERGED
  assert int(info.nstep) < 100
  assert float(jnp.max(info.trace)) > 1e3 * float(info.trace[0])


def test_residuals_of_huge_finite_states_do_not_overflow():
  # z* = 2x with x = 1e20 (float32): ||z||^2 ~ 1.6e41 overflows, ||z|| = 4e20 does not.
  x = jnp.full((4,), 1e20, jnp.float32)
  z, info = deqjax.fixed_point(lambda _, z, x: 0.5 * z + x, None, x, rtol=1e-5, tol=0.0)
  assert int(info.status) == Status.CONVERGED and bool(jnp.isfinite(info.residual))
  np.testing.assert_allclose(z, 2 * x, rtol=1e-5)
  assert float(info.rel_residual) < 1e-5
  # A state that is itself infinite is still non-finite.
  _, info = deqjax.fixed_point(lambda _, z, x: 0.5 * z + x, None, jnp.array([jnp.inf, 1.0], jnp.float32))
  assert int(info.status) == Status.NONFINITE


class _ScriptedSteps:
  """A solver that always steps by +1 (z0 = 0, 1, 2, ...), for residuals scripted per iterate."""

  def init(self, z, g, max_iter):
    return ()

  def direction(self, state, z, g):
    return jnp.ones_like(z)

  def update(self, state, z, g, dz, dg, active):
    return state


def test_the_status_describes_the_iterate_returned():
  # Iterates z = 0, 1, 2 with residuals 10, 1, 2 and ||f(z)|| = 1, 1, 100; rtol = 0.5: iterate 1
  # has the lowest residual but has not converged (1 > 0.5 * 1); iterate 2 has (2 < 0.5 * 100).
  # The solve must return iterate 2 with its own residual, not iterate 1 labelled CONVERGED.
  from deqjax._driver import Limits, solve

  scripted = Limits(max_iter=5, tol=0.0, rtol=0.5, divergence_ratio=1e6, max_growth=float("inf"))

  def residual_fn(z):
    residual = jnp.where(z[:, 0] == 0, 10.0, jnp.where(z[:, 0] == 1, 1.0, 2.0))
    scale = jnp.where(z[:, 0] == 2, 100.0, 1.0)
    return jnp.stack([residual, jnp.zeros_like(residual)], axis=1), scale

  z, info = solve(residual_fn, jnp.zeros((1, 2)), _ScriptedSteps(), scripted)
  assert int(info.status[0]) == Status.CONVERGED and int(info.nstep[0]) == 2
  assert float(z[0, 0]) == 2.0 and float(info.residual[0]) == 2.0 and float(info.rel_residual[0]) == 0.02


@pytest.mark.parametrize("solver", SOLVERS)
def test_empty_states_are_solved_at_once(solver):
  f = lambda a, z, x: jnp.tanh(a * z + x)
  for x, batch_axis in ((jnp.zeros((0,)), None), (jnp.zeros((3, 0)), 0)):
    z, info = deqjax.fixed_point(f, 0.5, x, solver=solver, batch_axis=batch_axis)
    assert z.shape == x.shape and bool(jnp.all(info.converged)) and int(jnp.max(info.nstep)) == 0
  grad = jax.grad(lambda a: jnp.sum(deqjax.fixed_point(f, a, jnp.zeros((0,)), solver=solver)[0]))(0.5)
  assert float(grad) == 0.0


def test_solver_memory_over_the_limit_is_refused_before_compiling():
  f = lambda a, z, x: jnp.tanh(a * z + x)
  x = jnp.zeros((8, 4096), jnp.float32)
  with pytest.raises(ValueError, match=r"forward solver's buffers would take .* GiB \(Broyden, max_iter=100000,"):
    deqjax.fixed_point(f, 0.5, x, max_iter=100000, batch_axis=0)
  # Broyden with max_iter 10 keeps m = 9 updates of a [1, 4] float64 state: 2 buffers [1, m, 4], 2
  # matrices [1, m, m], 2 vectors [1, m] (252 entries of 8 bytes) and an int32 count: 2,020 bytes.
  z = jnp.zeros((1, 4))
  deqjax.root_find(lambda z: -z, z, max_iter=10, backward_max_iter=10, max_buffer_bytes=2020)
  with pytest.raises(ValueError, match=r"would take 2,020 bytes .* over max_buffer_bytes=2019 "):
    deqjax.root_find(lambda z: -z, z, max_iter=10, backward="phantom", max_buffer_bytes=2019)
  with pytest.raises(ValueError, match=r"backward solver's buffers .* backward_max_iter=50,"):
    deqjax.fixed_point(f, 0.5, jnp.zeros(64), max_iter=5, backward_max_iter=50, max_buffer_bytes=50_000)
  unlimited = lambda x: deqjax.fixed_point(f, 0.5, x, max_iter=100000, batch_axis=0, max_buffer_bytes=None)
  assert jax.eval_shape(unlimited, x)[0].shape == x.shape  # None: traced (and would be compiled) as asked


# ---------------------------------------------------------------------------
# Tolerances: what is set is what applies; a run-away is never converged
# ---------------------------------------------------------------------------
def test_a_tolerance_set_alone_is_the_one_that_applies():
  # z = cos(z) + theta: ||f(z)|| ~ 1.6, so the default relative test (1e-4 * 1.6) stops far above 1e-13.
  f = lambda theta, z, x: jnp.cos(z) + theta
  x = jnp.zeros(4)
  _, default = deqjax.fixed_point(f, 0.3, x)
  assert bool(default.converged) and 1e-10 < float(default.residual) < 1e-6 + 1e-4 * 1.7
  _, absolute = deqjax.fixed_point(f, 0.3, x, tol=1e-13)
  assert bool(absolute.converged) and float(absolute.residual) < 1e-13
  _, relative = deqjax.fixed_point(f, 0.3, x, rtol=1e-12)
  assert bool(relative.converged) and float(relative.rel_residual) < 1e-12
  # A loose tolerance set alone is not tightened by the other default either: tol=0.5 stops at once
  # for a start whose residual is ||cos(0) + 0.3|| = 2.6 after one step, not at 1e-4 relative.
  _, loose = deqjax.fixed_point(f, 0.3, x, tol=0.5)
  assert bool(loose.converged) and 0.5 * 1e-4 < float(loose.residual) < 0.5
  # Both set: residual < tol + rtol * ||f(z)||, the sum.
  _, both = deqjax.fixed_point(f, 0.3, x, tol=1e-9, rtol=1e-9, max_iter=50)
  assert bool(both.converged) and float(both.residual) < 1e-9 + 1e-9 * 1.7
  # The adjoint follows the same rule: backward_tol alone is met, whatever the default rtol.
  probe = deqjax.backward_probe()
  stats = jax.grad(lambda q: jnp.sum(deqjax.fixed_point(f, 0.3, x, backward_tol=1e-13, backward_probe=q)[0]))(probe)
  assert float(stats.converged) == 1.0 and float(stats.residual) < 1e-13


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_run_away_iterate_is_never_converged(solver):
  # z = z + 1 + 0.1 sin z has no solution: the residual stays in [0.9, 1.1] per entry while z runs
  # away. Unbounded, Broyden's and Anderson's steps take ||f(z)|| past 3e4 within 5 steps, where the
  # default relative test (1e-4) passes by growth alone (jax 0.10.2: CONVERGED at z ~ 1.2e5), and
  # further out z + 1 rounds to z (a residual of exactly 0).
  f = lambda _, z, x: z + 1 + 0.1 * jnp.sin(z) + x
  x = jnp.zeros(9)
  z, info = deqjax.fixed_point(f, None, x, solver=solver, max_iter=60)
  assert int(info.status) == Status.MAX_STEPS and not bool(info.converged) and int(info.nstep) == 60
  # The automatic bound is 0.1 / rtol = 1e3 times the start's scale ||f(0)|| = 3: the iterate
  # returned is the best one within it, with its true residual (about 3).
  assert float(jnp.linalg.norm(f(None, z, x))) <= 1e3 * 3
  assert 0.9 * 3 < float(info.residual) < 1.1 * 3
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(f(None, z, x) - z), rtol=1e-12)
  if solver != "iteration":  # iteration moves ~1 a step: it stays inside the bound in 60 steps
    unbounded = deqjax.fixed_point(f, None, x, solver=solver, max_iter=60, max_growth=float("inf"))[1]
    assert bool(unbounded.converged)  # what the bound prevents
  # Per sample: the system with a fixed point converges, the run-away one alone does not.
  shift = jnp.array([1.0, 0.0])
  g = lambda s, z, x: s[:, None] * (z + 1 + 0.1 * jnp.sin(z)) + (1 - s[:, None]) * 0.5 * jnp.tanh(z) + x
  _, per_sample = deqjax.fixed_point(g, shift, jnp.zeros((2, 3)), solver=solver, batch_axis=0, max_iter=60)
  assert per_sample.status.tolist() == [Status.MAX_STEPS, Status.CONVERGED]


def test_without_the_bound_a_run_away_is_capped_and_an_overshoot_is_not_stopped():
  f = lambda _, z, x: z + 1 + 0.1 * jnp.sin(z) + x
  # Plain iteration (z grows by ~1 a step) with an absolute test and no bound reaches its cap.
  kw = dict(solver="iteration", max_iter=50, tol=1e-6, max_growth=float("inf"))
  _, capped = deqjax.fixed_point(f, None, jnp.zeros(9), **kw)
  assert int(capped.status) == Status.MAX_STEPS and int(capped.nstep) == 50
  # A step past the bound is not a stop, nor a convergence: z* = 100 x lies past a bound of 10 x the
  # start, the solve goes on to its cap, and returns the best iterate within the bound.
  g = lambda a, z, x: a * z + x
  z, info = deqjax.fixed_point(g, 0.99, jnp.ones(6), tol=1e-8, max_growth=10.0, max_iter=20)
  assert int(info.status) == Status.MAX_STEPS and int(info.nstep) == 20
  assert float(jnp.linalg.norm(g(0.99, z, jnp.ones(6)))) <= 10 * jnp.sqrt(6.0)


def test_a_distant_true_fixed_point_still_converges():
  # z = 0.99 z + x: z* = 100 x, 100 times the start's scale, inside the automatic bound (1e3).
  f = lambda a, z, x: a * z + x
  x = jnp.ones(6)
  z, info = deqjax.fixed_point(f, 0.99, x)
  assert bool(info.converged)
  np.testing.assert_allclose(z, 100 * x, rtol=1e-4)
  # Absolute test only: the automatic bound is 1e6, and z* = 1e4 x converges to 1e-8.
  z, info = deqjax.fixed_point(f, 0.9999, x, tol=1e-8)
  assert bool(info.converged) and float(info.residual) < 1e-8
  with pytest.raises(ValueError, match="max_growth must be None .* or a number > 1 .*; got max_growth=1"):
    deqjax.fixed_point(f, 0.99, x, max_growth=1)


# ---------------------------------------------------------------------------
# Stall detection
# ---------------------------------------------------------------------------
def test_a_plateau_stops_as_stalled_after_the_window():
  # Scripted residuals 10, 5, 4.99, 4.98, 4.97, 4.96, ...: after 5 no step falls by 1 %, so with a
  # window of 3 the solve stops after step 4 (three steps without progress), returning iterate 4.
  from deqjax._driver import Limits, solve

  def residual_fn(z):
    k = z[:, 0]
    residual = jnp.where(k == 0, 10.0, jnp.where(k == 1, 5.0, 5.0 - 0.01 * (k - 1)))
    return jnp.stack([residual, jnp.zeros_like(residual)], axis=1), jnp.full_like(k, 100.0)

  limits = Limits(max_iter=50, tol=0.0, rtol=0.0, divergence_ratio=1e6, max_growth=float("inf"))
  z, info = solve(residual_fn, jnp.zeros((1, 2)), _ScriptedSteps(), limits._replace(stall_window=3, stall_margin=0.01))
  assert int(info.status[0]) == Status.STALLED and int(info.nstep[0]) == 4
  assert float(z[0, 0]) == 4.0 and float(info.residual[0]) == pytest.approx(4.97)
  # A margin of 0 counts every decrease as progress: this never stalls and reaches the cap.
  _, info = solve(residual_fn, jnp.zeros((1, 2)), _ScriptedSteps(), limits._replace(stall_window=3))
  assert int(info.status[0]) == Status.MAX_STEPS and int(info.nstep[0]) == 50


def test_a_rotation_stalls_and_a_contraction_is_untouched():
  # z = R z + x with R a rotation by 90 degrees: plain iteration cycles with period 4 and never
  # beats its first residual; per sample, a contraction beside it converges exactly as without.
  rotation = jnp.array([[0.0, -1.0], [1.0, 0.0]])
  scales = jnp.array([1.0, 0.5])
  f = lambda s, z, x: s[:, None] * z @ rotation.T + x
  x = jnp.ones((2, 2))
  kw = dict(solver="iteration", batch_axis=0, max_iter=100, tol=1e-10)
  z, info = deqjax.fixed_point(f, scales, x, stall_window=8, stall_margin=0.01, **kw)
  assert info.status.tolist() == [Status.STALLED, Status.CONVERGED]
  assert int(info.nstep[0]) == 8  # the initial residual is never beaten by 1 %
  z_plain, plain = deqjax.fixed_point(f, scales, x, **kw)
  assert plain.status.tolist() == [Status.MAX_STEPS, Status.CONVERGED]
  assert int(plain.nstep[1]) == int(info.nstep[1])
  np.testing.assert_array_equal(z[1], z_plain[1])
  with pytest.raises(ValueError, match="stall_window must be None .* or an int >= 1; got stall_window=0"):
    deqjax.fixed_point(f, scales, x, stall_window=0, **kw)
  with pytest.raises(ValueError, match=r"stall_margin must be a number in \[0, 1\); got stall_margin=1"):
    deqjax.root_find(lambda z: -z, x, stall_window=3, stall_margin=1)


# ---------------------------------------------------------------------------
# Precision of the solvers' own algebra
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
  "solver, backward_solver", [("broyden", "broyden"), ("anderson", "anderson"), ("broyden", "gmres")]
)
def test_the_solvers_products_run_at_full_precision_under_a_low_default(solver, backward_solver):
  # Under JAX's default precision a float32 product runs in TF32 on a GPU (bfloat16 passes on a TPU):
  # ~1e-3 relative error in the quasi-Newton and Krylov algebra, whatever tolerance was asked for.
  # The cell here is elementwise, so every dot_general in the lowered program (forward and adjoint
  # solves) is the solvers' own; each must carry HIGHEST even with the default set to bfloat16.
  # (On the CPU the precision changes no number, so this checks what an accelerator is told to do.)
  def f(p, z, x):
    return jnp.tanh(p * z + x)

  p = jnp.full((3, 8), 0.5, jnp.float32)
  x = jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float32).reshape(3, 8)

  def loss(p):
    z, _ = deqjax.fixed_point(f, p, x, solver=solver, backward_solver=backward_solver, batch_axis=0)
    return jnp.sum(z)

  with jax.default_matmul_precision("bfloat16"):
    text = jax.jit(jax.grad(loss)).lower(p).as_text()
  dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  assert len(dots) >= 4, text  # products of both solves are there
  assert all("precision = [HIGHEST, HIGHEST]" in line for line in dots), [d for d in dots if "HIGHEST" not in d]


# ---------------------------------------------------------------------------
# Memory: the solves' buffers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("anchor", [1.5, -0.0, np.inf, -np.inf, np.nan])
def test_fresh_zeros_are_zeros_whatever_the_anchor(anchor):
  from deqjax._driver import fresh_zeros

  for dtype in (jnp.float32, jnp.bfloat16, jnp.float64):
    got = jax.jit(lambda a: fresh_zeros((2, 3, 4), a))(jnp.full((2, 4), anchor, dtype))
    assert got.dtype == dtype and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(np.asarray(got, np.float64), 0.0)


@pytest.mark.parametrize(
  "solver", [deqjax.Broyden(history=10), deqjax.Anderson(history=10)], ids=["broyden", "anderson"]
)
def test_the_adjoint_solve_reuses_the_forward_solves_history_memory(solver):
  # Each solve holds 2 * history vectors of its own; the forward's are dead once z* is found, so a training
  # step's compiled temporary memory must stay below the forward's plus a second history. Measured here (CPU,
  # in vectors of batch x n): Broyden forward 25, step 31; Anderson 37 and 51. Had both solves' buffers been
  # created up front (constant zeros merged into one broadcast, what `fresh_zeros` prevents; it happened on the
  # GPU until its zero could no longer be folded), the step would hold both histories: >= forward + 2 * history.
  batch, n, k = 2, 8192, 10
  vector = batch * n * 4

  def f(p, z, x):
    return jnp.tanh(p * jnp.roll(z, 1, axis=1) + x)

  kw = dict(solver=solver, batch_axis=0, max_iter=k, tol=0.0, rtol=0.0)
  x = jnp.linspace(-1.0, 1.0, batch * n, dtype=jnp.float32).reshape(batch, n)
  p = jnp.float32(0.5)

  def temp(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

  forward = temp(lambda p, x: deqjax.fixed_point(f, p, x, **kw)[0], p, x)
  step = temp(jax.grad(lambda p, x: jnp.sum(deqjax.fixed_point(f, p, x, **kw, backward_max_iter=k)[0])), p, x)
  assert forward >= 2 * k * vector, forward / vector  # the forward's history is in it
  assert step < forward + 2 * k * vector, (step / vector, forward / vector)

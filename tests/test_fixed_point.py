"""fixed_point: values and gradients against closed forms, unrolled limits and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqjax
from deqjax import Status

SOLVERS = ["broyden", "anderson", "iteration"]


def _contractive_matrix(key, n, radius=0.6, dtype=jnp.float64):
  a = jax.random.normal(key, (n, n), dtype)
  return radius * a / jnp.max(jnp.abs(jnp.linalg.eigvals(a)))


def linear(a, z, x):
  return a @ z + x


def tanh_layer(p, z, x):
  h = z @ p["w"] + x @ p["u"]
  return jnp.tanh(h + p["b"].reshape((1,) * (h.ndim - 1) + (-1,)))


def tanh_params(key, width=6, scale=0.5):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "w": scale * jax.random.normal(k1, (width, width), jnp.float64) / width**0.5,
    "u": jax.random.normal(k2, (width, width), jnp.float64) / width**0.5,
    "b": 0.1 * jax.random.normal(k3, (width,), jnp.float64),
  }


def unrolled(f, params, x, z0, steps):
  return jax.lax.fori_loop(0, steps, lambda _, z: f(params, z, x), z0)


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_linear_fixed_point_and_gradient_match_closed_form(solver):
  n = 8
  a = _contractive_matrix(jax.random.key(0), n)
  x = jax.random.normal(jax.random.key(1), (n,), jnp.float64)
  c = jax.random.normal(jax.random.key(2), (n,), jnp.float64)
  kw = dict(
    solver=solver, max_iter=200, tol=1e-12, rtol=0.0, backward_max_iter=200, backward_tol=1e-12, backward_rtol=0.0
  )

  z, info = deqjax.fixed_point(linear, a, x, **kw)
  exact = jnp.linalg.solve(jnp.eye(n) - a, x)
  np.testing.assert_allclose(z, exact, rtol=0, atol=1e-10)
  assert bool(info.converged) and int(info.status) == Status.CONVERGED
  assert float(info.residual) < 1e-12
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(linear(a, z, x) - z), rtol=1e-6, atol=1e-15)

  loss = lambda a, x: c @ deqjax.fixed_point(linear, a, x, **kw)[0]
  exact_loss = lambda a, x: c @ jnp.linalg.solve(jnp.eye(n) - a, x)
  grads = jax.grad(loss, argnums=(0, 1))(a, x)
  expected = jax.grad(exact_loss, argnums=(0, 1))(a, x)
  for got, want in zip(grads, expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_broyden_solves_linear_system_in_few_steps():
  # Good Broyden terminates on an n-dimensional linear problem within 2n steps.
  n = 5
  a = _contractive_matrix(jax.random.key(3), n, radius=0.95)
  x = jnp.ones((n,), jnp.float64)
  _, info = deqjax.fixed_point(linear, a, x, max_iter=50, tol=1e-11, rtol=0.0)
  assert bool(info.converged)
  assert int(info.nstep) <= 2 * n
  _, info_iter = deqjax.fixed_point(linear, a, x, solver="iteration", max_iter=50, tol=1e-11, rtol=0.0)
  assert not bool(info_iter.converged)  # radius 0.95: 50 plain steps are not enough


# ---------------------------------------------------------------------------
# Nonlinear layers: unrolled limit and finite differences (float64)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_tanh_layer_gradient_matches_unrolled_limit_and_finite_differences(solver):
  params = tanh_params(jax.random.key(4))
  x = jax.random.normal(jax.random.key(5), (3, 6), jnp.float64)
  c = jax.random.normal(jax.random.key(6), (3, 6), jnp.float64)
  kw = dict(
    solver=solver, max_iter=100, tol=1e-12, rtol=0.0, backward_max_iter=100, backward_tol=1e-12, backward_rtol=0.0
  )

  def loss(params, x):
    z, _ = deqjax.fixed_point(tanh_layer, params, x, **kw)
    return jnp.sum(c * z) + jnp.sum(z**2)

  def loss_unrolled(params, x):
    z = unrolled(tanh_layer, params, x, jnp.zeros_like(x), 200)
    return jnp.sum(c * z) + jnp.sum(z**2)

  np.testing.assert_allclose(loss(params, x), loss_unrolled(params, x), rtol=1e-11)
  g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
  u_params, u_x = jax.grad(loss_unrolled, argnums=(0, 1))(params, x)
  for got, want in zip(jax.tree.leaves((g_params, g_x)), jax.tree.leaves((u_params, u_x)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)

  # Central finite differences along a random direction of every input.
  direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape, a.dtype), (params, x))
  eps = 1e-6
  plus = jax.tree.map(lambda a, d: a + eps * d, (params, x), direction)
  minus = jax.tree.map(lambda a, d: a - eps * d, (params, x), direction)
  fd = (loss(*plus) - loss(*minus)) / (2 * eps)
  analytic = sum(
    jnp.vdot(g, d) for g, d in zip(jax.tree.leaves((g_params, g_x)), jax.tree.leaves(direction), strict=True)
  )
  np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_pytree_state_params_and_input():
  k = jax.random.split(jax.random.key(8), 4)
  params = {"mix": (0.3 * jax.random.normal(k[0], (4, 4)), [0.5 * jax.random.normal(k[1], (3, 3))])}
  x = {"a": jax.random.normal(k[2], (4,)), "b": jax.random.normal(k[3], (2, 3))}

  def f(p, z, x):
    m1, (m2,) = p["mix"]
    return {"a": jnp.tanh(m1 @ z["a"] + x["a"] + jnp.sum(z["b"])), "b": jnp.tanh(z["b"] @ m2 + x["b"] * 0.5)}

  z, info = deqjax.fixed_point(f, params, x, max_iter=60, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  assert bool(info.converged)
  ref = unrolled(f, params, x, jax.tree.map(jnp.zeros_like, x), 300)
  for got, want in zip(jax.tree.leaves(z), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-11)

  loss = lambda p, x: sum(
    jnp.sum(jnp.sin(leaf))
    for leaf in jax.tree.leaves(
      deqjax.fixed_point(
        f, p, x, max_iter=60, tol=1e-12, rtol=0.0, backward_max_iter=60, backward_tol=1e-12, backward_rtol=0.0
      )[0]
    )
  )
  loss_ref = lambda p, x: sum(
    jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(unrolled(f, p, x, jax.tree.map(jnp.zeros_like, x), 300))
  )
  got = jax.grad(loss, argnums=(0, 1))(params, x)
  want = jax.grad(loss_ref, argnums=(0, 1))(params, x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_state_different_from_input_needs_z0():
  # x has 3 features, the state 5: z0 sets the state's shape.
  w = 0.4 * jax.random.normal(jax.random.key(9), (5, 5)) / 5**0.5
  proj = jax.random.normal(jax.random.key(10), (3, 5))
  x = jax.random.normal(jax.random.key(11), (3,))
  f = lambda p, z, x: jnp.tanh(z @ p[0] + x @ p[1])
  z, info = deqjax.fixed_point(f, (w, proj), x, jnp.zeros(5), tol=1e-12, rtol=0.0, max_iter=60)
  assert z.shape == (5,) and bool(info.converged)
  np.testing.assert_allclose(z, f((w, proj), z, x), atol=1e-11)


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


def test_two_fixed_points_in_sequence_and_inside_scan():
  p1, p2 = tanh_params(jax.random.key(13)), tanh_params(jax.random.key(14))
  xs = jax.random.normal(jax.random.key(15), (4, 2, 6))
  kw = dict(max_iter=80, tol=1e-12, rtol=0.0, backward_max_iter=80, backward_tol=1e-12, backward_rtol=0.0)

  def model(p1, p2, xs, solve):
    def step(carry, x):
      z1 = solve(p1, x + carry)
      z2 = solve(p2, z1)
      return z2, jnp.sum(z2**2)

    _, out = jax.lax.scan(step, jnp.zeros((2, 6)), xs)
    return jnp.sum(out)

  implicit = lambda p, x: deqjax.fixed_point(tanh_layer, p, x, **kw)[0]
  reference = lambda p, x: unrolled(tanh_layer, p, x, jnp.zeros_like(x), 200)
  np.testing.assert_allclose(model(p1, p2, xs, implicit), model(p1, p2, xs, reference), rtol=1e-11)
  got = jax.jit(jax.grad(lambda a, b, x: model(a, b, x, implicit), argnums=(0, 1, 2)))(p1, p2, xs)
  want = jax.grad(lambda a, b, x: model(a, b, x, reference), argnums=(0, 1, 2))(p1, p2, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-10)


def test_closed_over_values_are_differentiated():
  # f closes over `scale`, a traced value under grad; its gradient must flow.
  x = jnp.array([0.3, -0.2, 0.9])

  def loss(scale):
    f = lambda _, z, x: scale * jnp.tanh(z) + x
    return jnp.sum(deqjax.fixed_point(f, None, x, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)[0])

  def loss_ref(scale):
    return jnp.sum(unrolled(lambda _, z, x: scale * jnp.tanh(z) + x, None, x, jnp.zeros(3), 300))

  np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.4), jax.grad(loss_ref)(0.4), rtol=1e-9)


# ---------------------------------------------------------------------------
# A repelling fixed point, z0's gradient
# ---------------------------------------------------------------------------
def test_broyden_finds_repelling_fixed_point_and_z0_gets_zero_gradient():
  # z = a z + b with a = 2: plain iteration runs away, Broyden lands on b / (1 - a).
  a = jnp.array([2.0, 3.0, 1.5])
  b = jnp.array([1.0, -2.0, 0.5])
  f = lambda a, z, b: a * z + b
  z0 = jnp.array([0.1, 0.2, 0.3])
  kw = dict(max_iter=30, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  z, info = deqjax.fixed_point(f, a, b, z0, **kw)
  np.testing.assert_allclose(z, b / (1 - a), atol=1e-12)
  assert bool(info.converged)
  _, info_iter = deqjax.fixed_point(f, a, b, z0, solver="iteration", max_iter=100, tol=1e-12, rtol=0.0)
  assert int(info_iter.status) == Status.DIVERGED

  loss = lambda a, b, z0: jnp.sum(deqjax.fixed_point(f, a, b, z0, **kw)[0] ** 2)
  g_a, g_b, g_z0 = jax.grad(loss, argnums=(0, 1, 2))(a, b, z0)
  zs = b / (1 - a)
  np.testing.assert_allclose(g_b, 2 * zs / (1 - a), rtol=1e-10)  # dz*/db = 1 / (1 - a)
  np.testing.assert_allclose(g_a, 2 * zs * b / (1 - a) ** 2, rtol=1e-10)  # dz*/da = b / (1 - a)^2
  assert bool(jnp.all(g_z0 == 0.0))


# ---------------------------------------------------------------------------
# Reporting: step cap, NaN, divergence, backward statistics
# ---------------------------------------------------------------------------
def test_step_cap_is_reported_and_bounds_work():
  a = _contractive_matrix(jax.random.key(16), 20, radius=0.99)
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
  _, info = deqjax.fixed_point(f, None, jnp.ones(4), solver="iteration", max_iter=100, divergence_ratio=1e3)
  assert int(info.status) == Status.DIVERGED
  assert int(info.nstep) < 100
  assert float(jnp.max(info.trace)) > 1e3 * float(info.trace[0])


def test_backward_statistics_arrive_through_the_probe():
  params = tanh_params(jax.random.key(17))
  x = jax.random.normal(jax.random.key(18), (4, 6))

  def loss(params, probe, **kw):
    z, _ = deqjax.fixed_point(tanh_layer, params, x, batch_axis=0, backward_probe=probe, **kw)
    return jnp.sum(z**2)

  probe = deqjax.backward_probe(4)
  _, stats = jax.grad(loss, argnums=(0, 1))(params, probe, backward_tol=1e-10, backward_rtol=0.0)
  assert stats.nstep.shape == (4,)
  assert bool(jnp.all(stats.converged == 1.0)) and bool(jnp.all(stats.status == Status.CONVERGED))
  assert bool(jnp.all(stats.nstep > 0)) and bool(jnp.all(stats.residual < 1e-10))
  _, stats = jax.grad(loss, argnums=(0, 1))(params, probe, backward_max_iter=2, backward_tol=0.0, backward_rtol=0.0)
  assert bool(jnp.all(stats.nstep == 2)) and bool(jnp.all(stats.status == Status.MAX_STEPS))
  assert bool(jnp.all(stats.converged == 0.0)) and bool(jnp.all(stats.residual > 0))


# ---------------------------------------------------------------------------
# Phantom backward
# ---------------------------------------------------------------------------
def test_phantom_one_step_is_the_jacobian_free_gradient():
  params = tanh_params(jax.random.key(19))
  x = jax.random.normal(jax.random.key(20), (2, 6))
  c = jax.random.normal(jax.random.key(21), (2, 6))
  kw = dict(max_iter=100, tol=1e-12, rtol=0.0)
  loss = lambda p, x: jnp.sum(c * deqjax.fixed_point(tanh_layer, p, x, backward="phantom", **kw)[0])
  got = jax.grad(loss, argnums=(0, 1))(params, x)
  z_star, _ = deqjax.fixed_point(tanh_layer, params, x, **kw)
  _, vjp = jax.vjp(lambda p, x: tanh_layer(p, z_star, x), params, x)
  want = vjp(c)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_phantom_with_many_steps_approaches_the_implicit_gradient():
  params = tanh_params(jax.random.key(22))
  x = jax.random.normal(jax.random.key(23), (2, 6))
  kw = dict(max_iter=100, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  loss = lambda p, **o: jnp.sum(jnp.sin(deqjax.fixed_point(tanh_layer, p, x, **kw, **o)[0]))
  implicit = jax.grad(loss)(params)
  few = jax.grad(lambda p: loss(p, backward="phantom", phantom_steps=2, phantom_damping=0.8))(params)
  many = jax.grad(lambda p: loss(p, backward="phantom", phantom_steps=60, phantom_damping=0.8))(params)
  err = lambda g: max(
    float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(implicit), strict=True)
  )
  assert err(many) < 1e-8 < err(few)


def test_compact_and_ring_broyden_take_the_same_steps():
  # Full history uses the compact form U = M S, V = L D; a limited history stores u, v in a
  # ring. Until the ring wraps, both are the same algorithm and must give the same iterates.
  params = tanh_params(jax.random.key(24), width=10, scale=0.9)
  x = jax.random.normal(jax.random.key(25), (3, 10))
  kw = dict(max_iter=14, tol=0.0, rtol=0.0, batch_axis=0)
  z_full, info_full = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(), **kw)
  z_ring, info_ring = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(history=10), **kw)
  # Updates 1..10 fill the ring; update 11 still sees the pair it overwrites (the direction is
  # formed from the old buffers plus the new pair), so iterates 0..12 agree and 13 differs.
  np.testing.assert_allclose(info_full.trace[:, :13], info_ring.trace[:, :13], rtol=1e-9, atol=1e-14)
  assert not np.allclose(info_full.trace[:, 13], info_ring.trace[:, 13], rtol=1e-9)
  assert float(jnp.max(info_full.residual)) < 1e-5 * float(jnp.min(info_full.trace[:, 0]))
  # The ring keeps converging after it wraps.
  _, info_small = deqjax.fixed_point(tanh_layer, params, x, solver=deqjax.Broyden(history=3), **kw)
  assert float(jnp.max(info_small.residual)) < 1e-4 * float(jnp.min(info_small.trace[:, 0]))

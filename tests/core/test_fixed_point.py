"""deqjax._fixed_point: fixed_point and root_find against closed forms, unrolled limits and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_cases import SOLVERS, contractive_matrix, linear, tanh_layer, tanh_params, unrolled

import deqjax
from deqjax import Status


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_linear_fixed_point_and_gradient_match_closed_form(solver):
  n = 8
  a = contractive_matrix(jax.random.key(0), n)
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


def test_state_different_from_input_needs_z0():
  # x has 3 features, the state 5: z0 sets the state's shape.
  w = 0.4 * jax.random.normal(jax.random.key(9), (5, 5)) / 5**0.5
  proj = jax.random.normal(jax.random.key(10), (3, 5))
  x = jax.random.normal(jax.random.key(11), (3,))
  f = lambda p, z, x: jnp.tanh(z @ p[0] + x @ p[1])
  z, info = deqjax.fixed_point(f, (w, proj), x, jnp.zeros(5), tol=1e-12, rtol=0.0, max_iter=60)
  assert z.shape == (5,) and bool(info.converged)
  np.testing.assert_allclose(z, f((w, proj), z, x), atol=1e-11)


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


def test_root_find_cube_root():
  # g(z) = (2 - z^3) / 3 has dg/dz = -z^2 ~ -I near the root 2^(1/3).
  z, info = deqjax.root_find(lambda z: (2.0 - z**3) / 3.0, jnp.ones((3,)), tol=1e-12, rtol=0.0)
  assert bool(info.converged) and int(info.status) == Status.CONVERGED
  np.testing.assert_allclose(z, 2.0 ** (1 / 3), rtol=1e-12)
  np.testing.assert_allclose(info.rel_residual, info.residual / jnp.linalg.norm(z + (2.0 - z**3) / 3.0), rtol=1e-9)
  with pytest.raises(ValueError, match="g\\(z\\) returned shape"):
    deqjax.root_find(lambda z: z[:1], jnp.ones((3,)))


def test_root_find_gradients_are_implicit_and_match_closed_form_and_finite_differences():
  # Root of g(z) = (c - z^3) / 3: z* = c^(1/3), dz*/dc = 1 / (3 c^(2/3)), per coordinate.
  c = jnp.array([2.0, 8.0, 27.0])
  tight = dict(tol=1e-13, backward_tol=1e-13)
  root = lambda c, **kw: deqjax.root_find(lambda z: (c - z**3) / 3.0, jnp.ones(3), **tight, **kw)[0]
  np.testing.assert_allclose(jax.grad(lambda c: jnp.sum(root(c)))(c), 1 / (3 * c ** (2 / 3)), rtol=1e-10)
  # A pytree of closed-over parameters, per-sample systems, a vector-valued loss: the Jacobian of
  # the root of g(z) = A z - tanh(B z) + x (a monotone map near -I) against central differences.
  n = 5
  a = -jnp.eye(n) + 0.2 * jax.random.normal(jax.random.key(0), (n, n), jnp.float64) / n**0.5
  params = {"a": a, "b": 0.3 * jax.random.normal(jax.random.key(1), (n, n), jnp.float64) / n**0.5}
  x = jax.random.normal(jax.random.key(2), (3, n), jnp.float64)

  def solve(params, x):
    g = lambda z: z @ params["a"].T - jnp.tanh(z @ params["b"].T) + x
    return deqjax.root_find(g, jnp.zeros_like(x), batch_axis=0, max_iter=60, **tight)

  z, info = solve(params, x)
  assert bool(jnp.all(info.converged)) and float(jnp.max(info.residual)) < 1e-13
  np.testing.assert_allclose(z @ a.T - jnp.tanh(z @ params["b"].T), -x, atol=1e-12)
  weights = jax.random.normal(jax.random.key(3), (3, n), jnp.float64)
  loss = lambda params, x: jnp.sum(weights * jnp.sin(solve(params, x)[0]))
  grads = jax.grad(loss, argnums=(0, 1))(params, x)
  leaves, treedef = jax.tree.flatten((params, x))
  h = 1e-6
  for i, (leaf, grad) in enumerate(zip(leaves, jax.tree.leaves(grads), strict=True)):
    direction = jax.random.normal(jax.random.key(4 + i), leaf.shape, jnp.float64)
    shifted = lambda sign, i=i, direction=direction: jax.tree.unflatten(
      treedef, [v + sign * h * direction if j == i else v for j, v in enumerate(leaves)]
    )
    central = (loss(*shifted(1)) - loss(*shifted(-1))) / (2 * h)
    np.testing.assert_allclose(jnp.sum(grad * direction), central, rtol=1e-7, err_msg=f"leaf {i}")


def test_root_find_has_fixed_point_s_backward_options():
  # g = f - z for the tanh layer: every backward option gives the gradient fixed_point gives for f,
  # and the adjoint statistics arrive through the probe.
  params = tanh_params(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 6), jnp.float64)
  z0 = jnp.zeros_like(x)

  def losses(p, probe, **kw):
    g = lambda z: tanh_layer(p, z, x) - z
    z_root, _ = deqjax.root_find(g, z0, batch_axis=0, backward_probe=probe, **kw)
    z_fixed, _ = deqjax.fixed_point(tanh_layer, p, x, z0, batch_axis=0, **kw)
    return jnp.sum(jnp.cos(z_root)), jnp.sum(jnp.cos(z_fixed))

  options = [
    dict(tol=1e-12, backward_tol=1e-12),
    dict(tol=1e-12, backward="phantom", phantom_steps=3, phantom_damping=0.7),
    dict(tol=1e-12, backward_solver="anderson", backward_tol=1e-12),
  ]
  for kw in options:
    probe = deqjax.backward_probe(4)
    root_grad, stats = jax.grad(lambda p, q, kw=kw: losses(p, q, **kw)[0], argnums=(0, 1))(params, probe)
    fixed_grad = jax.grad(lambda p, kw=kw: losses(p, None, **kw)[1])(params)
    for a, b in zip(jax.tree.leaves(root_grad), jax.tree.leaves(fixed_grad), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=str(kw))
    if kw.get("backward") == "phantom":
      assert float(jnp.sum(stats.nstep)) == 0.0
    else:
      assert bool(jnp.all(stats.converged == 1.0)) and float(jnp.min(stats.nstep)) >= 1
      assert float(jnp.max(stats.residual)) < 1e-12


def test_a_diverging_adjoint_gives_a_nan_gradient_not_a_wrong_one():
  # z = 2z + x: z* = -x and dz*/dx = -1, but the adjoint iteration w <- 2w + 1 diverges.
  f = lambda a, z, x: a * z + x
  grad = lambda **options: jax.grad(lambda x: jnp.sum(deqjax.fixed_point(f, 2.0, x, **options)[0]))(jnp.ones(3))
  assert bool(jnp.all(jnp.isnan(grad(backward_solver="iteration"))))
  np.testing.assert_allclose(grad(), -1.0, rtol=1e-6)  # Broyden solves the same adjoint
  # Per sample: only the sample whose adjoint diverges (residual 2, 4, 8 > 3 x 2) is NaN; one that
  # reaches its cap keeps its value.
  scales = jnp.array([2.0, 0.5])
  g = lambda s, z, x: s[:, None] * z + x
  options = dict(batch_axis=0, backward_solver="iteration", backward_max_iter=3, divergence_ratio=3.0)
  sample_grad = jax.grad(lambda x: jnp.sum(deqjax.fixed_point(g, scales, x, **options)[0]))(jnp.ones((2, 2)))
  assert bool(jnp.all(jnp.isnan(sample_grad[0])))
  np.testing.assert_allclose(sample_grad[1], 1 + 0.5 + 0.25 + 0.125, rtol=1e-6)  # 3 steps of w <- 0.5 w + 1 from w = 1


def test_auxiliary_outputs_come_from_the_equilibrium_and_are_differentiable():
  # f returns (z_next, aux) with aux = a * sum(z^2): at z*, d aux / d a = sum(z*^2) + 2 a z*^T dz*/da.
  f = lambda a, z, x: (jnp.tanh(a * z + x), {"energy": a * jnp.sum(z**2)})
  x = jnp.array([0.3, -0.2, 0.5])
  z, aux, info = deqjax.fixed_point(f, 0.7, x, tol=1e-12, rtol=0.0, has_aux=True)
  assert bool(info.converged)
  np.testing.assert_allclose(z, jnp.tanh(0.7 * z + x), atol=1e-12)
  np.testing.assert_allclose(aux["energy"], 0.7 * jnp.sum(z**2), rtol=1e-12)
  energy = lambda a: deqjax.fixed_point(f, a, x, tol=1e-13, rtol=0.0, backward_tol=1e-13, has_aux=True)[1]["energy"]
  h = 1e-6
  np.testing.assert_allclose(jax.grad(energy)(0.7), (energy(0.7 + h) - energy(0.7 - h)) / (2 * h), rtol=1e-7)
  # dz*/da = (I - J)^-1 (1 - z*^2) z* with J = diag(a (1 - z*^2)), per coordinate.
  dz = (1 - z**2) * z / (1 - 0.7 * (1 - z**2))
  np.testing.assert_allclose(jax.grad(energy)(0.7), jnp.sum(z**2) + 2 * 0.7 * jnp.sum(z * dz), rtol=1e-9)
  with pytest.raises(
    TypeError, match=r"has_aux=True: f\(params, z, x\) must return a pair \(z_next, aux\); it returns"
  ):
    deqjax.fixed_point(lambda a, z, x: jnp.tanh(a * z + x), 0.7, x, has_aux=True)
  with pytest.raises(TypeError, match="has_aux must be a bool; got has_aux='yes'"):
    deqjax.fixed_point(f, 0.7, x, has_aux="yes")

"""deqjax._validation: the trace-time errors name the argument and the shapes involved."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqjax

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
X = jnp.ones((2, 3), jnp.float32)


def test_wrong_output_shape_names_both_shapes():
  with pytest.raises(ValueError, match=re.escape("returned shape (3,) for z0, whose shape is (2, 3)")):
    deqjax.fixed_point(lambda _, z, x: z[0], None, X)


def test_wrong_output_dtype_names_the_dtypes():
  with pytest.raises(TypeError, match="returned dtype float64 for z0.*float32"):
    deqjax.fixed_point(lambda _, z, x: z.astype(jnp.float64), None, X)


def test_wrong_output_structure():
  with pytest.raises(TypeError, match="structure of z0"):
    deqjax.fixed_point(lambda _, z, x: (z, z), None, X)


def test_pytree_leaf_shape_error_names_the_leaf():
  x = {"a": jnp.ones((2,)), "b": jnp.ones((3,))}
  with pytest.raises(ValueError, match=re.escape("for z0['b'], whose shape is (3,)")):
    deqjax.fixed_point(lambda _, z, x: {"a": z["a"], "b": z["b"][:2]}, None, x)


@pytest.mark.parametrize(
  "kwargs, error, pattern",
  [
    (dict(solver="newton"), ValueError, "Unknown solver='newton'; expected one of"),
    (dict(backward_solver="lbfgs"), ValueError, "Unknown backward_solver='lbfgs'"),
    (dict(solver=3), TypeError, "solver must be one of"),
    (dict(backward="unrolled"), ValueError, r"Unknown backward='unrolled'; expected one of \['implicit', 'phantom'\]"),
    (dict(max_iter=0), ValueError, "max_iter must be >= 1; got max_iter=0"),
    (dict(max_iter=2.5), TypeError, "max_iter must be a Python int"),
    (dict(backward_max_iter=0), ValueError, "backward_max_iter must be >= 1"),
    (dict(tol=-1e-3), ValueError, "tol must be a finite number >= 0; got tol=-0.001"),
    (dict(rtol=-1.0), ValueError, "rtol must be a finite number >= 0"),
    (dict(backward_tol=float("nan")), ValueError, "backward_tol must be a finite number >= 0"),
    (dict(backward_rtol=-2.0), ValueError, "backward_rtol must be a finite number >= 0"),
    (dict(phantom_steps=0), ValueError, "phantom_steps must be >= 1"),
    (dict(phantom_damping=0.0), ValueError, r"phantom_damping must be in \(0, 1\]"),
    (dict(divergence_ratio=0.5), ValueError, "divergence_ratio must be a number > 1"),
    (dict(batch_axis=-1), ValueError, "batch_axis must be None or a non-negative int"),
    (dict(batch_axis=2), ValueError, re.escape("batch_axis=2 is out of range for z0 with shape (2, 3)")),
  ],
)
def test_bad_options(kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    deqjax.fixed_point(lambda _, z, x: 0.5 * z + x, None, X, **kwargs)


def test_bad_solver_settings():
  with pytest.raises(ValueError, match="Broyden history must be None or an int >= 1; got history=0"):
    deqjax.Broyden(history=0)
  with pytest.raises(ValueError, match="Anderson history must be an int >= 1; got history=0"):
    deqjax.Anderson(history=0)
  with pytest.raises(ValueError, match=r"Iteration damping must be in \(0, 1\]"):
    deqjax.Iteration(damping=1.5)


def test_integer_input_without_z0():
  with pytest.raises(
    TypeError,
    match=r"z0=None means zeros shaped like x, but x has dtype int32 \(shape \(4,\)\); pass a floating-point z0",
  ):
    deqjax.fixed_point(lambda _, z, x: z, None, jnp.arange(4, dtype=jnp.int32))


def test_batch_sizes_must_agree():
  z0 = {"a": jnp.ones((2, 3)), "b": jnp.ones((5,))}
  with pytest.raises(ValueError, match=re.escape("disagree on the batch size; shapes [(2, 3), (5,)]")):
    deqjax.fixed_point(lambda _, z, x: z, None, None, z0, batch_axis=0)


def test_bad_probe_shape():
  with pytest.raises(ValueError, match=re.escape("backward_probe.nstep must be float32 with shape (2,)")):
    deqjax.fixed_point(lambda _, z, x: 0.5 * z + x, None, X, batch_axis=0, backward_probe=deqjax.backward_probe(None))


def test_forward_mode_is_refused_with_what_to_use_instead():
  f = lambda w, z, x: jnp.tanh(w * z + x)
  x = jnp.ones((2, 3), jnp.float64)
  solve = lambda w: deqjax.fixed_point(f, w, x, tol=1e-13, rtol=0.0, backward_tol=1e-13, backward_rtol=0.0)[0]
  with pytest.raises(TypeError, match=r"forward-mode.*Use reverse mode instead: jax.grad, jax.vjp, jax.jacrev"):
    jax.jvp(solve, (0.5,), (1.0,))
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jacfwd(solve)(0.5)
  # Reverse mode works and agrees with central differences.
  jac = jax.jacrev(solve)(0.5)
  fd = (solve(0.5 + 1e-6) - solve(0.5 - 1e-6)) / 2e-6
  np.testing.assert_allclose(jac, fd, rtol=1e-7)


def test_a_user_written_solver_is_used_forward_and_backward():
  # A damped iteration written against deqjax.Solver, outside the library: z* and the implicit
  # gradient of the linear map z = A z + x match the closed forms (I - A)^-1 x and (I - A)^-T 1.
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class HalfSteps:
    def init(self, z, g, max_iter):
      return jnp.zeros((), jnp.int32)

    def direction(self, state, z, g):
      return 0.5 * g

    def update(self, state, z, g, dz, dg, active):
      return state + 1  # the solver's own state: steps taken

  assert isinstance(HalfSteps(), deqjax.Solver)
  a = jnp.array([[0.2, 0.1], [0.0, 0.3]])
  x = jnp.array([1.0, 2.0])
  f = lambda a, z, x: a @ z + x
  options = dict(solver=HalfSteps(), max_iter=200, tol=1e-12, rtol=0.0, backward_tol=1e-12, backward_rtol=0.0)
  z, info = deqjax.fixed_point(f, a, x, **options)
  assert bool(info.converged) and int(info.nstep) > 20  # half steps: slower than plain iteration
  np.testing.assert_allclose(z, jnp.linalg.solve(jnp.eye(2) - a, x), atol=1e-10)
  grad = jax.grad(lambda x: jnp.sum(deqjax.fixed_point(f, a, x, **options)[0]))(x)
  np.testing.assert_allclose(grad, jnp.linalg.solve((jnp.eye(2) - a).T, jnp.ones(2)), atol=1e-10)

  class Unhashable(HalfSteps):
    __hash__ = None

  with pytest.raises(TypeError, match=r"solver=Unhashable\(...\) must be hashable"):
    deqjax.fixed_point(f, a, x, solver=Unhashable())
  with pytest.raises(TypeError, match=r"backward_solver must be one of .* lacks \['direction', 'update'\]"):
    deqjax.fixed_point(f, a, x, backward_solver=types.SimpleNamespace(init=lambda z, g, m: ()))

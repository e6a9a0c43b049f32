"""The fixed-point correction in the DEQ language models: what `correction_nll` scores, and its gradient.

Broyden's first iterate is z_1 = f(z_0) (its inverse-Jacobian estimate starts at -I), so the
correction output at step 1, f(stop_gradient(z_1)), is the cell applied twice from z_0 with a gradient
through the second application only: exactly the unrolled cell with one settle iteration (no
gradient) and depth 1. At a step count past the solve's convergence the kept iterate is z* itself,
and the correction output is f(z*), what the softmax reads in training (feed_fz).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_checks import F64, TIGHT, unit_scale_embeddings

from deqjax.models import DEQTransformerConfig, DEQTransformerLM, DEQTrellisNetConfig, DEQTrellisNetLM

MODELS = {
  "transformer": (
    DEQTransformerLM,
    DEQTransformerConfig,
    dict(n_token=40, d_model=16, n_head=2, d_inner=24, mem_len=4),
  ),
  "trellisnet": (DEQTrellisNetLM, DEQTrellisNetConfig, dict(n_token=40, d_embed=8, nhid=12, nout=8)),
}
COMMON = dict(cutoffs=(10, 25), max_iter=100, correction_steps=(1, 100))


def _model(name, **overrides):
  model_class, config_class, fields = MODELS[name]
  return unit_scale_embeddings(model_class(config_class(**{**fields, **COMMON, **overrides}), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_correction_outputs_are_scored_like_the_equilibrium(name):
  model = _model(name, pretrain_depth=1)
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 40)
  key = jax.random.key(2)  # a training call (dropout rates are 0: no masks)
  out = model(tokens, tokens, dropout_key=key, dtype=F64, **TIGHT)
  assert out.correction_nll.shape == (2, 2, 6)
  assert bool(jnp.all(out.info.converged)) and int(jnp.max(out.info.nstep)) < 100
  # Step 100, past convergence: the kept iterate is z*, scored as the equilibrium's own output f(z*).
  np.testing.assert_allclose(out.correction_nll[1], out.nll, rtol=1e-12)
  # Step 1: f(stop_gradient(f(z0))) = the unrolled cell, one settle iteration then one layer.
  settled = model(tokens, tokens, dropout_key=key, dtype=F64, unrolled=True, settle_iters=1)
  np.testing.assert_allclose(out.correction_nll[0], settled.nll, rtol=1e-12)
  # The spectral radius at z*, when asked (a diagnostic: the NLL is unchanged), per sample: rho < 1 where
  # plain iteration converges; the estimate matches the residual trace's late contraction of f^k only
  # loosely, so it is bounded, not equated, here (deqjax.spectral_radius is tested against eigenvalues).
  monitored = model(tokens, tokens, dropout_key=key, dtype=F64, radius_key=jax.random.key(5), **TIGHT)
  assert monitored.spectral_radius.shape == (2,) and bool(jnp.all(monitored.spectral_radius > 0))
  np.testing.assert_array_equal(monitored.nll, out.nll)
  assert out.spectral_radius is None
  # Only training solves carry the correction: not evaluation, not the unrolled cell.
  assert model(tokens, tokens, dtype=F64, **TIGHT).correction_nll is None
  assert model(tokens, tokens, dropout_key=key, dtype=F64, unrolled=True).correction_nll is None


def test_correction_gradient_is_the_one_step_phantom_gradient():
  model = _model("transformer", pretrain_depth=1)
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 40)
  key = jax.random.key(4)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  correction = lambda p: jnp.mean(
    nnx.merge(graphdef, p, rest)(tokens, tokens, dropout_key=key, dtype=F64, **TIGHT).correction_nll[0]
  )
  settled = lambda p: jnp.mean(
    nnx.merge(graphdef, p, rest)(tokens, tokens, dropout_key=key, dtype=F64, unrolled=True, settle_iters=1).nll
  )
  flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
  g_correction, g_settled = flat(jax.jit(jax.grad(correction))(params)), flat(jax.jit(jax.grad(settled))(params))
  assert float(jnp.linalg.norm(g_settled)) > 0
  np.testing.assert_allclose(g_correction, g_settled, atol=1e-12 * float(jnp.max(jnp.abs(g_settled))))


def test_bad_correction_steps():
  for steps in [(0,), (3, 2), (31,), (1.5,)]:  # max_iter 30
    with pytest.raises(ValueError, match="correction_steps"):
      DEQTransformerConfig(**MODELS["transformer"][2], correction_steps=steps)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unrolled_calls_refuse_solver_options(name):
  # The unrolled cell solves nothing: a solver option there would be silently ignored.
  model = _model(name, pretrain_depth=2)
  tokens = jax.random.randint(jax.random.key(5), (2, 6), 0, 40)
  with pytest.raises(TypeError, match=r"pretrain_depth=2 .* \['max_iter', 'rtol'\]"):
    model(tokens, tokens, unrolled=True, max_iter=5, rtol=1e-6)
  with pytest.raises(TypeError, match="radius_key"):
    model(tokens, tokens, unrolled=True, radius_key=jax.random.key(0))
  settled = model(tokens, tokens, unrolled=True, settle_iters=1)  # its own option is accepted
  assert settled.info is None and settled.nll.shape == (2, 6)

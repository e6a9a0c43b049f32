"""DEQ-TrellisNet: exact parameter count, causality, history, DEQ = unrolled limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_checks import F64, TIGHT, assert_causal, count, jitted, solve_options, unit_scale_embeddings

from deqjax.models import DEQTrellisNetConfig, DEQTrellisNetLM

TINY = dict(n_token=40, d_embed=8, nhid=12, nout=8, cutoffs=(10, 25))


def _model(**overrides):
  return unit_scale_embeddings(DEQTrellisNetLM(DEQTrellisNetConfig(**{**TINY, **overrides}), rngs=nnx.Rngs(0)))


def test_shipped_config_counts_exactly_the_reference_parameters():
  config = DEQTrellisNetConfig(n_token=267735, d_embed=500, nhid=1500, nout=500, cutoffs=(2800, 20000, 76000))
  model = nnx.eval_shape(lambda: DEQTrellisNetLM(config, rngs=nnx.Rngs(0)))
  assert count(model) == 174_168_738
  assert count(model.cell) == 40_032_000


@pytest.mark.parametrize("unrolled", [True, False])
def test_causality_and_history(unrolled):
  model = _model()
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 40)
  memory = model(tokens, tokens, dtype=F64, **TIGHT).memory
  for mem in (None, memory):
    assert_causal(model, tokens, mem, unrolled, position=4, min_change=1e-4)
  # The history (last input, h and c of the previous segment) reaches the first position.
  forward = jitted(unrolled=unrolled, dtype=F64, **solve_options(unrolled))
  fresh = forward(model, tokens, tokens, None).nll
  carried = forward(model, tokens, tokens, memory).nll
  assert float(jnp.max(jnp.abs(fresh[:, 0] - carried[:, 0]))) > 1e-4


def test_deq_equals_the_weight_tied_unrolled_limit():
  model = _model(pretrain_depth=300)
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, 40)
  loss = lambda m, unrolled: jnp.mean(m(tokens, tokens, unrolled=unrolled, dtype=F64, **solve_options(unrolled)).nll)
  np.testing.assert_allclose(loss(model, False), loss(model, True), rtol=1e-11)
  flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
  g_deq = flat(nnx.jit(nnx.grad(lambda m: loss(m, False)))(model))
  g_unrolled = flat(nnx.jit(nnx.grad(lambda m: loss(m, True)))(model))
  assert float(g_deq @ g_unrolled / (jnp.linalg.norm(g_deq) * jnp.linalg.norm(g_unrolled))) > 0.999
  np.testing.assert_allclose(g_deq, g_unrolled, atol=1e-8 * float(jnp.max(jnp.abs(g_unrolled))))


def test_dropout_masks_fixed_and_bfloat16_forward():
  model = _model(dropout_input=0.1, dropout_hidden=0.1, dropout_output=0.1)
  tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, 40)
  out = model(tokens, tokens, dropout_key=jax.random.key(4), dtype=F64, **TIGHT)
  assert bool(jnp.all(out.info.converged)) and float(jnp.max(out.info.residual)) < 1e-12
  low = model(tokens, tokens, dtype=jnp.bfloat16)
  assert bool(jnp.all(jnp.isfinite(low.nll))) and low.memory.h.dtype == jnp.bfloat16


def test_bad_configs():
  with pytest.raises(ValueError, match="nout=6 must equal d_embed=8"):
    DEQTrellisNetConfig(n_token=40, d_embed=8, nhid=12, nout=6)
  with pytest.raises(ValueError, match=r"cutoffs=\[50\] with n_token=40"):
    DEQTrellisNetConfig(n_token=40, d_embed=8, nhid=12, nout=8, cutoffs=(50,))

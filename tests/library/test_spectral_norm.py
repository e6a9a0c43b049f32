"""Spectral normalisation of the cells' linear maps (norm="spectral"): sigma by power iteration, its gradient,
the normalised kernels, and the models built with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_checks import F64, TIGHT, count

from deqjax.models import DEQTransformerConfig, DEQTransformerLM, DEQTrellisNetConfig, DEQTrellisNetLM
from deqjax.nn.weight_norm import WeightNormConv1D, WeightNormDense, spectral_norm


def _matrix(singular_values, rows, key=0):
  """A `[rows, len(s)]` float64 matrix with the given singular values (random orthogonal factors)."""
  k1, k2 = jax.random.split(jax.random.key(key))
  u, _ = jnp.linalg.qr(jax.random.normal(k1, (rows, len(singular_values)), F64))
  v, _ = jnp.linalg.qr(jax.random.normal(k2, (len(singular_values), len(singular_values)), F64))
  return u @ jnp.diag(jnp.asarray(singular_values, F64)) @ v.T


def test_sigma_and_its_gradient_against_the_svd():
  m = _matrix([3.0, 1.5, 0.7, 0.1], rows=7)
  np.testing.assert_allclose(spectral_norm(m), 3.0, rtol=1e-12)  # (1.5 / 3)^60: converged
  # d sigma / dM = u1 v1^T for a simple top singular value.
  u, _, vt = np.linalg.svd(np.asarray(m))
  np.testing.assert_allclose(jax.grad(spectral_norm)(m), np.outer(u[:, 0], vt[0]), atol=1e-12)
  # Leading axes are rows: a conv kernel [taps, d_in, d_out] is the [taps * d_in, d_out] matrix.
  kernel = m.reshape(7, 4)[None].repeat(2, axis=0)
  np.testing.assert_allclose(spectral_norm(kernel), np.linalg.norm(np.asarray(kernel).reshape(14, 4), 2), rtol=1e-12)
  # Fewer iterations never overestimate.
  assert float(spectral_norm(m, iterations=1)) <= 3.0


def test_spectral_layers_have_unit_spectral_norm_and_no_gains():
  dense = WeightNormDense(16, 24, norm="spectral", rngs=nnx.Rngs(0))
  conv = WeightNormConv1D(8, 12, 2, norm="spectral", rngs=nnx.Rngs(1))
  assert dense.g is None and conv.g is None
  sigma = np.linalg.norm(np.asarray(dense.weights()["kernel"], np.float64), 2)
  # The estimate never exceeds sigma, so the normalised kernel's is >= 1; random kernels have no wide
  # gap between their top singular values, and 30 power steps come within a few 1e-3.
  assert 1.0 - 1e-6 <= sigma < 1.005
  conv_kernel = np.asarray(conv.weights()["kernel"], np.float64).reshape(16, 12)
  assert 1.0 - 1e-6 <= np.linalg.norm(conv_kernel, 2) < 1.005
  x = jax.random.normal(jax.random.key(2), (3, 16))
  np.testing.assert_allclose(dense(x), x @ dense.weights()["kernel"] + dense.bias[...][None], rtol=1e-6)
  with pytest.raises(ValueError, match="norm='batch'"):
    WeightNormDense(4, 4, norm="batch", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "model_class, config_class, fields, gains",
  [
    # gains dropped: qkv 48, r 16, o 16, ff1 24, ff2 16 = 120 (the weight norm's g per output unit).
    (
      DEQTransformerLM,
      DEQTransformerConfig,
      dict(n_token=40, d_model=16, n_head=2, d_inner=24),
      48 + 16 + 16 + 24 + 16,
    ),
    # inject and recur convolutions, 4 H outputs each, H = nhid + nout = 20.
    (DEQTrellisNetLM, DEQTrellisNetConfig, dict(n_token=40, d_embed=8, nhid=12, nout=8), 2 * 80),
  ],
)
def test_models_with_spectral_norm(model_class, config_class, fields, gains):
  weight = model_class(config_class(**fields), rngs=nnx.Rngs(0))
  spectral = model_class(config_class(**fields, norm="spectral"), rngs=nnx.Rngs(0))
  assert count(weight) - count(spectral) == gains
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 40)
  out = spectral(tokens, tokens, dtype=F64, **TIGHT)
  assert bool(jnp.all(out.info.converged)) and bool(jnp.all(jnp.isfinite(out.nll)))
  with pytest.raises(ValueError, match="norm='layer'"):
    config_class(**fields, norm="layer")


def test_trellisnet_injection_keeps_weight_norm_beside_a_spectral_recurrence():
  fields = dict(n_token=40, d_embed=8, nhid=12, nout=8, norm="spectral")
  mixed = DEQTrellisNetLM(DEQTrellisNetConfig(**fields, injection_norm="weight"), rngs=nnx.Rngs(0))
  spectral = DEQTrellisNetLM(DEQTrellisNetConfig(**fields), rngs=nnx.Rngs(0))
  assert mixed.cell.recur.g is None and mixed.cell.inject.g.shape == (80,)  # 4 H gains, H = 20
  assert count(mixed) - count(spectral) == 80
  # Injection: g v / ||v|| per output channel (g = ||v|| at initialisation, so the kernel is v); the
  # recurrence: sigma 1 whatever the injection's norm.
  inject = mixed.cell.inject
  inject.g[...] = 2.0 * inject.g[...]
  np.testing.assert_allclose(inject.weights()["kernel"], 2.0 * inject.v[...], rtol=1e-6)
  recur = np.asarray(mixed.cell.recur.weights()["kernel"], np.float64).reshape(-1, 80)
  assert 1.0 - 1e-6 <= np.linalg.norm(recur, 2) < 1.005
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 40)
  out = mixed(tokens, tokens, dtype=F64, **TIGHT)
  assert bool(jnp.all(out.info.converged)) and bool(jnp.all(jnp.isfinite(out.nll)))
  with pytest.raises(ValueError, match="injection_norm='batch'"):
    DEQTrellisNetConfig(**fields, injection_norm="batch")

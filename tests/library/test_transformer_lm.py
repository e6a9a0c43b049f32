"""DEQ-Transformer pieces and language model: counts, attention algebra, softmax, causality, DEQ = unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_checks import F64, TIGHT, assert_causal, count, solve_options, unit_scale_embeddings

import deqjax
from deqjax.models import DEQTransformerConfig, DEQTransformerLM
from deqjax.nn import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax, rel_shift, relative_attention
from deqjax.nn.transformer_cell import slide_memory

SHIPPED = DEQTransformerConfig(
    n_token=267735, d_model=700, n_head=10, d_head=70, d_inner=48000, cutoffs=(20000, 40000, 200000), div_val=4,
    dropout=0.05, mem_len=150,
)  # fmt: skip
TINY = dict(n_token=40, d_model=16, n_head=2, d_inner=24, cutoffs=(10, 25), div_val=2, mem_len=4)


def test_shipped_config_counts_exactly_the_reference_parameters():
  model = nnx.eval_shape(lambda: DEQTransformerLM(SHIPPED, rngs=nnx.Rngs(0)))  # nothing allocated
  assert count(model) == 97_691_888
  assert count(model.cell) + count(model.injection) == 71_225_100


def test_rel_shift_aligns_distances_with_keys():
  b, h, q, m = 1, 1, 3, 2
  k = q + m
  distance_of_column = jnp.arange(k - 1, -1, -1, dtype=F64)  # column j scores distance k-1-j
  x = jnp.broadcast_to(distance_of_column, (b, h, q, k))
  shifted = rel_shift(x)[0, 0]
  for i in range(q):
    for j in range(m + i + 1):
      assert shifted[i, j] == m + i - j  # query at absolute position m+i, key at j


def test_relative_attention_matches_a_direct_sum():
  b, q, m, h, d = 2, 3, 2, 2, 4
  k = q + m
  keys = jax.random.split(jax.random.key(0), 6)
  query = jax.random.normal(keys[0], (b, q, h, d), F64)
  key = jax.random.normal(keys[1], (b, k, h, d), F64)
  value = jax.random.normal(keys[2], (b, k, h, d), F64)
  r_k = jax.random.normal(keys[3], (k, h, d), F64)  # row j: distance k-1-j
  r_w, r_r = jax.random.normal(keys[4], (h, d), F64), jax.random.normal(keys[5], (h, d), F64)
  got = relative_attention(query, key, value, r_k, r_w, r_r, m)
  got_stored = relative_attention(query, key, value, r_k, r_w, r_r, m, remat=False)
  want = np.zeros((b, q, h, d))
  for bi in range(b):
    for hi in range(h):
      for i in range(q):
        visible = range(m + i + 1)
        scores = np.array(
          [
            (query[bi, i, hi] + r_w[hi]) @ key[bi, j, hi] + (query[bi, i, hi] + r_r[hi]) @ r_k[k - 1 - (m + i - j), hi]
            for j in visible
          ]
        ) / np.sqrt(d)
        p = np.exp(scores - scores.max())
        p /= p.sum()
        want[bi, i, hi] = sum(p[j] * value[bi, j, hi] for j in visible)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(got_stored, want, rtol=1e-12, atol=1e-12)


def attention_arguments(keys, b, q, k, h, d):
  """Random float64 (query, key, value, r_k, r_w_bias, r_r_bias) for `relative_attention`, from six keys."""
  shapes = [(b, q, h, d), (b, k, h, d), (b, k, h, d), (k, h, d), (h, d), (h, d)]
  return [jax.random.normal(key, shape, F64) for key, shape in zip(keys, shapes, strict=True)]


def test_relative_attention_gradients_do_not_depend_on_rematerialisation():
  # remat trades memory for time only: the same VJP, and both match a central finite difference.
  b, q, m, h, d = 2, 4, 3, 2, 3
  k = q + m
  keys = jax.random.split(jax.random.key(1), 9)
  args = attention_arguments(keys[:6], b, q, k, h, d)
  cotangent = jax.random.normal(keys[6], (b, q, h, d), F64)
  tangents = [jax.random.normal(key, a.shape, F64) for key, a in zip(jax.random.split(keys[7], 6), args, strict=True)]
  grads = {}
  for remat in (True, False):
    attend = lambda *a, remat=remat: relative_attention(*a, m, window=3, remat=remat)
    _, vjp = jax.vjp(attend, *args)
    grads[remat] = vjp(cotangent)
  for with_remat, stored in zip(grads[True], grads[False], strict=True):
    np.testing.assert_allclose(stored, with_remat, rtol=1e-12, atol=1e-13)
  eps = 1e-6
  shifted = lambda sign: relative_attention(*[a + sign * eps * t for a, t in zip(args, tangents, strict=True)], m, 3)
  directional = float(jnp.vdot(cotangent, (shifted(1) - shifted(-1)) / (2 * eps)))
  from_vjp = sum(float(jnp.vdot(g, t)) for g, t in zip(grads[False], tangents, strict=True))
  assert abs(from_vjp - directional) < 1e-7 * max(1.0, abs(directional))


@pytest.mark.parametrize("m, window", [(0, None), (3, None), (3, 4)])
def test_query_blocks_compute_the_same_attention_and_gradients(m, window):
  # Blocks of queries that score only the keys they may see: the same outputs and VJPs as one block, for
  # even, uneven and more-blocks-than-queries splits, with memory and a window.
  b, q, h, d = 2, 7, 2, 3
  k = q + m
  keys = jax.random.split(jax.random.key(2), 8)
  args = attention_arguments(keys[:6], b, q, k, h, d)
  cotangent = jax.random.normal(keys[6], (b, q, h, d), F64)
  results = {}
  for chunks in (1, 2, 3, 7, 20):
    attend = lambda *a, n=chunks: relative_attention(*a, m, window=window, remat=False, query_chunks=n)
    out, vjp = jax.vjp(attend, *args)
    results[chunks] = (out, *vjp(cotangent))
  for chunks in (2, 3, 7, 20):
    for got, want in zip(results[chunks], results[1], strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
  with pytest.raises(ValueError, match=r"query_chunks must be an int >= 1; got query_chunks=0 \(q \(2, 7, 2, 3\)\)"):
    relative_attention(*args, m, query_chunks=0)


@pytest.mark.parametrize("cutoffs, div_val", [((10, 25), 2), ((5, 12, 30), 3), ((), 1), ((8, 20), 1)])
def test_adaptive_softmax_normalises_and_nll_matches(cutoffs, div_val):
  n_token, d = 40, 12
  rngs = nnx.Rngs(0)
  emb = AdaptiveEmbedding(n_token, d, d, cutoffs, div_val, rngs=rngs)
  softmax = ProjectedAdaptiveLogSoftmax(n_token, d, d, cutoffs, div_val, rngs=rngs)
  # Non-zero cluster parameters and biases, so every term of the head is exercised.
  state = nnx.state(softmax, nnx.Param)
  nnx.update(softmax, jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), state))
  hidden = jax.random.normal(jax.random.key(1), (7, d))
  logp = softmax.log_probs(hidden, emb)
  assert logp.shape == (7, n_token)
  np.testing.assert_allclose(jax.scipy.special.logsumexp(logp, axis=-1), 0.0, atol=1e-5)
  targets = jnp.array([0, 9, 10, 24, 25, 39, 3])
  np.testing.assert_allclose(softmax.nll(hidden, targets, emb, chunk=3), -logp[jnp.arange(7), targets], rtol=1e-5)


def test_adaptive_embedding_looks_up_each_cluster():
  n_token, d = 40, 12
  emb = AdaptiveEmbedding(n_token, d, d, (10, 25), 2, rngs=nnx.Rngs(0))
  tokens = jnp.array([3, 17, 30])
  got = emb(tokens)
  for t, row in zip([3, 17, 30], got, strict=True):
    i, lo = (0, 0) if t < 10 else (1, 10) if t < 25 else (2, 25)
    expected = emb.tables[i][...][t - lo] @ emb.projs[i][...].T * d**0.5
    np.testing.assert_allclose(row, expected, rtol=1e-6)
  assert [t[...].shape for t in emb.tables] == [(10, 12), (15, 6), (15, 3)]


def _model(**overrides):
  return unit_scale_embeddings(DEQTransformerLM(DEQTransformerConfig(**{**TINY, **overrides}), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("unrolled", [True, False])
def test_causality_with_and_without_memory(unrolled):
  model = _model()
  tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 40)
  memory = model(tokens, tokens, dtype=F64, **TIGHT).memory
  for mem in (None, memory):
    assert_causal(model, tokens, mem, unrolled, position=4, min_change=1e-5)


def test_memory_carries_equilibria_between_segments():
  model = _model()
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, 40)
  first = model(tokens, tokens, dtype=F64, **TIGHT)
  assert first.memory.z.shape == (2, 4, 16) and first.memory.u.shape == (2, 4, 48)
  second = model(tokens, tokens, first.memory, dtype=F64, **TIGHT)
  assert bool(jnp.all(second.info.converged))
  assert float(jnp.max(jnp.abs(second.nll - first.nll))) > 1e-5  # the context changed the prediction
  # Same tokens, so the injections of the last 4 positions agree; the equilibria saw other context.
  np.testing.assert_allclose(second.memory.u, first.memory.u)
  assert float(jnp.max(jnp.abs(second.memory.z - first.memory.z))) > 1e-5


def test_slide_memory_keeps_the_last_positions():
  old, new = jnp.arange(3.0)[None, :, None], jnp.arange(3.0, 7.0)[None, :, None]
  for keep, expected in [(0, []), (2, [5, 6]), (4, [3, 4, 5, 6]), (6, [1, 2, 3, 4, 5, 6]), (9, [0, 1, 2, 3, 4, 5, 6])]:
    np.testing.assert_array_equal(slide_memory(old, new, keep)[0, :, 0], expected)


def test_deq_equals_the_weight_tied_unrolled_limit():
  # rho(df/dz) ~ 0.9 at z* for this tiny model: 400 unrolled layers reach the fixed point to ~1e-15.
  model = _model(pretrain_depth=400)
  tokens = jax.random.randint(jax.random.key(4), (2, 6), 0, 40)

  def loss(model, unrolled):
    return jnp.mean(model(tokens, tokens, unrolled=unrolled, dtype=F64, **solve_options(unrolled)).nll)

  np.testing.assert_allclose(loss(model, False), loss(model, True), rtol=1e-11)
  g_deq = jax.tree.leaves(nnx.jit(nnx.grad(lambda m: loss(m, False)))(model))
  g_unrolled = jax.tree.leaves(nnx.jit(nnx.grad(lambda m: loss(m, True)))(model))
  flat_deq = jnp.concatenate([g.ravel() for g in g_deq])
  flat_unrolled = jnp.concatenate([g.ravel() for g in g_unrolled])
  cosine = flat_deq @ flat_unrolled / (jnp.linalg.norm(flat_deq) * jnp.linalg.norm(flat_unrolled))
  assert float(cosine) > 0.999
  np.testing.assert_allclose(flat_deq, flat_unrolled, atol=1e-8 * float(jnp.max(jnp.abs(flat_unrolled))))


def test_dropout_masks_are_fixed_across_iterations_and_the_backward_solve():
  model = _model(dropout=0.1)
  tokens = jax.random.randint(jax.random.key(5), (2, 6), 0, 40)
  key = jax.random.key(6)
  out = model(tokens, tokens, dropout_key=key, dtype=F64, **TIGHT)
  # One fixed f: the solve reaches a 1e-12 residual, impossible if masks changed per iteration.
  assert bool(jnp.all(out.info.converged)) and float(jnp.max(out.info.residual)) < 1e-12
  assert float(jnp.max(jnp.abs(out.nll - model(tokens, tokens, dtype=F64, **TIGHT).nll))) > 1e-5  # masks act

  # The implicit gradient (adjoint solved with the same masks) matches central differences.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = jax.jit(
    lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(tokens, tokens, dropout_key=key, dtype=F64, **TIGHT).nll)
  )
  grads = jax.jit(jax.grad(loss))(params)
  direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape, F64), params)
  eps = 1e-6
  shift = lambda s: jax.tree.map(lambda a, d: a.astype(F64) + s * eps * d, params, direction)
  fd = (loss(shift(1.0)) - loss(shift(-1.0))) / (2 * eps)
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True))
  np.testing.assert_allclose(analytic, fd, rtol=1e-5)


def test_bfloat16_forward_runs():
  model = _model()
  tokens = jax.random.randint(jax.random.key(7), (2, 6), 0, 40)
  out = model(tokens, tokens, dtype=jnp.bfloat16)
  assert out.nll.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out.nll)))
  assert out.memory.z.dtype == jnp.bfloat16
  reference = model(tokens, tokens, dtype=F64, **TIGHT).nll
  np.testing.assert_allclose(out.nll, reference, atol=0.15)


def test_bad_configs():
  with pytest.raises(ValueError, match="d_model=10 is not divisible by n_head=3"):
    DEQTransformerConfig(n_token=40, d_model=10, n_head=3, d_inner=8)
  with pytest.raises(ValueError, match=r"cutoffs must be strictly increasing.*cutoffs=\[10, 60\] with n_token=40"):
    DEQTransformerConfig(n_token=40, d_model=16, n_head=2, d_inner=8, cutoffs=(10, 60), div_val=2)
  with pytest.raises(ValueError, match="dropout must be in"):
    DEQTransformerConfig(n_token=40, d_model=16, n_head=2, d_inner=8, dropout=1.0)
  tokens = jnp.zeros((1, 3), jnp.int32)
  with pytest.raises(TypeError, match="unexpected keyword argument 'mode'"):  # solver options are fixed_point's
    _model()(tokens, tokens, mode="deep")


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_per_device_solves_under_a_mesh_equal_the_whole_batch_solve(dropout):
  # Under a 4-device mesh each device solves its own samples (shard_map); the per-sample results, the
  # implicit gradients (summed over the devices at the boundary, the shared position keys' too) and the
  # backward statistics are those of the whole-batch solve, to the solves' 1e-12 residuals.
  assert jax.device_count() == 4
  model = _model(dropout=dropout)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(8), (4, 6), 0, 40)
  key = jax.random.key(9) if dropout else None
  memory = model(tokens, tokens, dtype=F64, **TIGHT).memory  # a context: the memory's keys and values

  def loss(params, probe):
    out = nnx.merge(graphdef, params, rest)(
      tokens, tokens, memory, dropout_key=key, dtype=F64, backward_probe=probe, **TIGHT
    )  # fmt: skip
    return jnp.mean(out.nll), out

  def run(mesh):
    with jax.set_mesh(mesh):
      grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
      (g_params, g_probe), out = grad(params, deqjax.backward_probe(4))
    return jax.device_get((out, g_params, g_probe))

  types = (jax.sharding.AxisType.Auto,)
  whole = run(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1], axis_types=types))
  split = run(jax.make_mesh((4,), ("data",), axis_types=types))
  (out1, g1, p1), (out4, g4, p4) = whole, split
  assert bool(jnp.all(out4.info.converged)) and float(jnp.max(out4.info.residual)) < 1e-12
  np.testing.assert_allclose(out4.nll, out1.nll, rtol=1e-10)
  np.testing.assert_array_equal(out4.info.nstep, out1.info.nstep)  # each sample's own solve, step for step
  # The adjoint's right-hand sides agree to the last bits only (per-device blocking): a step either way at 1e-12.
  assert bool(jnp.all(p4.converged == 1)) and float(jnp.max(p4.residual)) < 1e-12
  assert np.max(np.abs(p4.nstep - p1.nstep)) <= 1
  np.testing.assert_allclose(out4.memory.z, out1.memory.z, atol=1e-11)
  scale = max(np.max(np.abs(g)) for g in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-9 * scale)
  r_net = [g for path, g in jax.tree_util.tree_leaves_with_path(g4) if "r_net" in jax.tree_util.keystr(path)]
  # The shared input's gradient is far above the tolerance: a missing or doubled sum over devices would show.
  assert r_net and min(np.max(np.abs(g)) for g in r_net) > 1e-6 * scale

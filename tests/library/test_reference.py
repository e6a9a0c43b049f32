"""Parity with the 2019 reference code: its own outputs (../shared/refparity) and the weight mapping.

The dumps hold, per segment, what the reference computed in a float32 run and a float64 run
(the ground truth) from the same weights: f at fixed points, the equilibrium z*, the new
memory and the per-token NLL. Tolerances: float64 within 1e-8, float32 within 5e-5.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from paths import SHARED, TEST_DATA

import deqjax
from deqjax.models import (
  DEQTransformerConfig,
  DEQTransformerLM,
  DEQTrellisNetConfig,
  DEQTrellisNetLM,
  from_reference,
  to_reference,
)

REFPARITY = os.path.join(SHARED, "refparity")
DUMPS = {
  "transformer": ("ref_tiny_dev.npz", "config_dev.json"),
  "trellisnet": ("ref_tiny_trellis_dev.npz", "config_trellis_dev.json"),
}
RUNS = {
  "float32": (jnp.float32, "", 5e-5, 1e-6),
  "float64": (jnp.float64, "f64/", 1e-8, 1e-12),
}  # dtype, prefix, tol, solve
F64 = jnp.float64


@functools.cache
def dump(kind):
  """(arrays, state_dict, hparams) of the reference dump of `kind`."""
  npz, config = DUMPS[kind]
  arrays = dict(np.load(os.path.join(REFPARITY, npz)))
  with open(os.path.join(REFPARITY, config)) as f:
    meta = json.load(f)
  hparams = dict(meta["model_kwargs"])
  if kind == "trellisnet":
    hparams["splits"] = meta["criterion_kwargs"]["splits"]
  state_dict = {name: value for name, value in arrays.items() if "/" not in name}
  return arrays, state_dict, hparams


def channels_last(a):
  """Reference `[b, channels, time]` -> ours `[b, time, channels]`."""
  return np.transpose(a, (0, 2, 1))


def time_major_to_batch(a):
  """Reference `[time, b, ...]` -> ours `[b, time, ...]`."""
  return np.swapaxes(a, 0, 1)


def cell_pieces(model, tokens, memory, dtype):
  """(f, weights, inputs, z-shape template) of one segment, as the model's forward forms them (no dropout)."""
  emb = model.embedding(tokens).astype(dtype)
  b, q = tokens.shape
  if isinstance(model, DEQTransformerLM):
    c = model.config
    u = model.injection(emb)
    pos = deqjax.nn.sinusoid_positions(memory.u.shape[1] + q, c.d_model, dtype)
    weights, inputs = model.cell.prepare(memory.u.astype(dtype), u, memory.z.astype(dtype), pos, None)
    z0 = jnp.zeros((b, q, c.d_model), dtype)
  else:
    weights, inputs = model.cell.prepare(
      model.cell.injection(emb), memory.h.astype(dtype), memory.c.astype(dtype), None
    )
    z0 = {"h": jnp.zeros((b, q, model.config.d_state), dtype), "c": jnp.zeros((b, q, model.config.d_state), dtype)}
  return model.cell.f, jax.tree.map(lambda w: w.astype(dtype), weights), inputs, z0


def to_state(kind, z):
  """Our state -> the reference's `[b, channels, time]` layout ([h; c] for the TrellisNet)."""
  if kind == "transformer":
    return z
  return jnp.concatenate([z["h"], z["c"]], axis=-1)


def segment_outputs(model, tokens, targets, memory, z_probe, dtype, solve_tol):
  """f(0), f(probe), z* (solved alone), and the model's forward on one segment, in one compiled call."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(params, tokens, targets, memory, z_probe):
    model = nnx.merge(graphdef, params, rest)
    f, weights, inputs, z0 = cell_pieces(model, tokens, memory, dtype)
    z_star, _ = deqjax.fixed_point(f, weights, inputs, z0, max_iter=100, tol=solve_tol, rtol=0.0, batch_axis=0)
    out = model(tokens, targets, memory, dtype=dtype, max_iter=100, tol=solve_tol, rtol=0.0)
    return f(weights, z0, inputs), f(weights, z_probe, inputs), z_star, out

  return run(params, tokens, targets, memory, z_probe)


@pytest.mark.parametrize("run", sorted(RUNS))
@pytest.mark.parametrize("kind", sorted(DUMPS))
def test_outputs_match_the_reference_code(kind, run):
  dtype, prefix, tol, solve_tol = RUNS[run]
  arrays, state_dict, hparams = dump(kind)
  model = from_reference(state_dict, hparams, param_dtype=dtype)
  memory = model.init_memory(2, dtype)
  close = functools.partial(np.testing.assert_allclose, rtol=0, atol=tol)
  for s in range(3):
    seg = lambda key: arrays[f"{prefix}seg{s}/{key}"]  # noqa: B023
    tokens, targets = jnp.asarray(seg("data").T), jnp.asarray(seg("target").T)
    if kind == "transformer":
      probe = jnp.asarray(channels_last(seg("z_probe")), dtype)
    else:
      h, c = np.split(channels_last(seg("z_probe")), 2, axis=-1)
      probe = {"h": jnp.asarray(h, dtype), "c": jnp.asarray(c, dtype)}
    f_zeros, f_probe, z_star, out = segment_outputs(model, tokens, targets, memory, probe, dtype, solve_tol)
    # f itself, without a solver: at zeros and at a random point.
    close(to_state(kind, f_zeros), channels_last(seg("f_zeros")))
    close(to_state(kind, f_probe), channels_last(seg("f_z_probe")))
    # The equilibrium, and the per-token NLL and memory of the model's forward.
    close(to_state(kind, z_star), channels_last(seg("zstar")))
    assert out.nll.dtype == dtype and out.nll.shape == tokens.shape
    if kind == "transformer":
      close(out.nll, seg("nll").T)
      close(out.memory.z, time_major_to_batch(seg("new_mems_z")))
      close(out.memory.u, time_major_to_batch(seg("new_mems_u")))
    else:
      close(out.nll, seg("splitce_nll").T)
      h, c = np.split(time_major_to_batch(seg("new_mems")), 2, axis=-1)
      close(out.memory.h, h)
      close(out.memory.c, c)
    assert float(jnp.max(out.info.residual)) < 1e3 * solve_tol  # the solves behind the figures converged
    memory = out.memory


@pytest.mark.parametrize("kind", sorted(DUMPS))
def test_the_reference_state_dict_round_trips(kind):
  _, state_dict, hparams = dump(kind)
  back, back_hparams = to_reference(from_reference(state_dict, hparams))
  assert sorted(back) == sorted(state_dict)
  for name, value in state_dict.items():
    assert back[name].shape == value.shape, name
    # func_copy holds effective weights g v / ||v||, recomputed here: equal to float32 rounding.
    atol = 1e-6 if ("func_copy." in name or name == "pos_emb.inv_freq") else 0.0
    np.testing.assert_allclose(back[name], value, rtol=0, atol=atol, err_msg=name)
  for key in ("n_token", "d_model", "n_head", "d_head", "d_inner", "mem_len", "div_val", "cutoffs", "pre_lnorm"):
    if key in hparams:
      assert back_hparams[key] == hparams[key], key
  if kind == "trellisnet":
    assert back_hparams["splits"] == hparams["splits"] and back_hparams["nhid"] == hparams["nhid"]


VARIANTS = {
  "pre_lnorm_local_untied": (
    DEQTransformerLM,
    dict(n_token=40, d_model=16, n_head=2, d_inner=24, cutoffs=(10, 25), div_val=2, mem_len=5, pre_lnorm=True,
         local_size=4, tie_weights=False, tie_projs=(True, False)),
  ),
  "div1_projected": (
    DEQTransformerLM, dict(n_token=30, d_model=12, n_head=3, d_inner=20, d_embed=8, cutoffs=(12,), mem_len=3)
  ),
  "plain_softmax": (DEQTransformerLM, dict(n_token=20, d_model=8, n_head=2, d_inner=16, mem_len=0)),
  "trellis_k3_dil2_untied": (
    DEQTrellisNetLM, dict(n_token=30, d_embed=6, nhid=5, nout=4, cutoffs=(10,), kernel_size=3, dilation=2,
                          tie_weights=False),
  ),
  "trellis_plain": (DEQTrellisNetLM, dict(n_token=25, d_embed=6, nhid=5, nout=6)),
}  # fmt: skip


def random_model(model_class, config, seed=0):
  """A model with every parameter drawn at random (so zero biases and tied-by-init values cannot hide a mix-up)."""
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0))), nnx.Param, ...)
  rng = np.random.default_rng(seed)
  draw = lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape) + 0.5, x.dtype)
  return nnx.merge(graphdef, jax.tree.map(draw, params), rest)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_any_model_round_trips_through_the_reference_layout(variant):
  model_class, fields = VARIANTS[variant]
  config_class = DEQTransformerConfig if model_class is DEQTransformerLM else DEQTrellisNetConfig
  model = random_model(model_class, config_class(**fields))
  state_dict, hparams = to_reference(model)
  again = from_reference(state_dict, hparams)
  assert again.config == model.config
  same = jax.tree.map(
    lambda a, b: bool(jnp.array_equal(a, b)), nnx.state(model, nnx.Param), nnx.state(again, nnx.Param)
  )
  assert all(jax.tree.leaves(same))
  state_dict_again, hparams_again = to_reference(again)
  assert hparams_again == hparams
  assert all(np.array_equal(state_dict[k], state_dict_again[k]) for k in state_dict)


def test_the_mapping_puts_each_weight_where_the_reference_reads_it():
  """A hand-made pre-LN reference model computed directly from its state_dict: f at one point."""
  model = random_model(DEQTransformerLM, DEQTransformerConfig(**VARIANTS["pre_lnorm_local_untied"][1]), seed=3)
  sd, hp = to_reference(model)
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  rng = np.random.default_rng(0)
  b, q, m, d, h, dh = 2, 4, 3, hp["d_model"], hp["n_head"], hp["d_head"]
  z, z_mem = rng.normal(size=(b, d, q)), rng.normal(size=(b, d, m))
  us = rng.normal(size=(b, 3 * d, m + q))
  ln = lambda x: (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)  # over channels

  def conv(name, x):  # a weight-normed k=1 Conv1d of the reference, on [b, channels, time]
    v, g = sd[f"func.{name}.weight_v"][:, :, 0], sd[f"func.{name}.weight_g"].reshape(-1)
    y = np.einsum("oi,bit->bot", v * (g / np.linalg.norm(v, axis=1))[:, None], x)
    return y + sd[f"func.{name}.bias"][None, :, None] if f"func.{name}.bias" in sd else y

  k_len = m + q
  pos_seq = np.arange(k_len - 1, -1, -1.0)
  inv_freq = 1 / 10000 ** (np.arange(0.0, d, 2.0) / d)  # the buffer, recomputed in float64 as the f64 dump does
  np.testing.assert_allclose(sd["pos_emb.inv_freq"], inv_freq, rtol=1e-6)
  pos_emb = np.concatenate([np.sin(np.outer(inv_freq, pos_seq)), np.cos(np.outer(inv_freq, pos_seq))])[None]
  w = conv("dec_attn.qkv_net", ln(np.concatenate([z_mem, z], axis=2))) + us
  wq, wk, wv = np.split(w, 3, axis=1)
  wq = wq[:, :, -q:].reshape(b, h, dh, q)
  wk, wv = wk.reshape(b, h, dh, k_len), wv.reshape(b, h, dh, k_len)
  r = conv("dec_attn.r_net", pos_emb)[0].reshape(h, dh, k_len)
  ac = np.einsum("bndi,bndj->bnij", wq + sd["func.dec_attn.r_w_bias"][None, :, :, None], wk)
  bd_raw = np.einsum("bndi,ndj->bnij", wq + sd["func.dec_attn.r_r_bias"][None, :, :, None], r)
  bd = np.zeros_like(bd_raw)
  for i in range(q):
    for j in range(k_len):
      bd[:, :, i, j] = bd_raw[:, :, i, j + q - 1 - i] if j + q - 1 - i < k_len else 0.0
  score = (ac + bd) / np.sqrt(dh)
  dist = (np.arange(q)[:, None] + m) - np.arange(k_len)[None, :]
  score = np.where((dist >= 0) & (dist < hp["local_size"]), score, -np.inf)
  prob = np.exp(score - score.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  attn = np.einsum("bnij,bndj->bndi", prob, wv).reshape(b, h * dh, q)
  hn = ln(conv("dec_attn.o_net", attn) + z)
  expected = conv("pos_ff.ff2_net", np.maximum(conv("pos_ff.ff1_net", hn), 0.0)) + hn

  c = model.config
  to_ours = lambda a: jnp.asarray(channels_last(a), F64)
  params = jax.tree.map(lambda a: a.astype(F64), nnx.state(model, nnx.Param))
  model64 = nnx.merge(nnx.split(model, nnx.Param, ...)[0], params, nnx.split(model, nnx.Param, ...)[2])
  pos = deqjax.nn.sinusoid_positions(k_len, c.d_model, F64)
  u_mem, u = to_ours(us[:, :, :m]), to_ours(us[:, :, m:])
  weights, inputs = model64.cell.prepare(u_mem, u, to_ours(z_mem), pos, None)
  got = model64.cell.f(weights, to_ours(z), inputs)
  np.testing.assert_allclose(np.asarray(got), channels_last(expected), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def transformer_dump():
  _, state_dict, hparams = dump("transformer")
  return state_dict, hparams


def test_missing_unexpected_and_misshaped_names_are_listed(transformer_dump):
  state_dict, hparams = transformer_dump
  broken = dict(state_dict)
  del broken["func.dec_attn.r_w_bias"]
  broken["func.dec_attn.extra"] = np.zeros(3)
  broken["inject_conv.bias"] = np.zeros(5)
  with pytest.raises(ValueError) as error:
    from_reference(broken, hparams)
  message = str(error.value)
  assert "missing func.dec_attn.r_w_bias (3, 8)" in message
  assert "unexpected func.dec_attn.extra (3,)" in message
  assert "inject_conv.bias (5,) (expected (72,))" in message


def test_inconsistent_aliases_are_refused(transformer_dump):
  state_dict, hparams = transformer_dump
  for name in ("deq.func.dec_attn.qkv_net.weight_v", "deqback.func_copy.pos_ff.ff1_net.weight", "crit.out_projs.1"):
    broken = dict(state_dict)
    broken[name] = state_dict[name] + 1e-3
    with pytest.raises(ValueError, match=f"aliases disagree.*{name.replace('.', '[.]')} [(]off by 0.001"):
      from_reference(broken, hparams)
  # Aliases are optional: func.* alone loads the same model.
  canonical = {k: v for k, v in state_dict.items() if not k.startswith(("func_copy.", "deq.", "deqback."))}
  a, b = from_reference(canonical, hparams), from_reference(state_dict, hparams)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))))


def test_bad_hparams_are_named(transformer_dump):
  state_dict, hparams = transformer_dump
  with pytest.raises(ValueError, match=r"unknown \['n_layers'\], missing \['mem_len'\]"):
    from_reference(state_dict, {**{k: v for k, v in hparams.items() if k != "mem_len"}, "n_layers": 2})
  with pytest.raises(ValueError, match="n_head=3 x d_head=6 must equal d_model=24"):
    from_reference(state_dict, {**hparams, "d_head": 6})
  with pytest.raises(ValueError, match="does not fit the hparams.*wrong shapes"):
    from_reference(state_dict, {**hparams, "d_inner": 40})
  _, trellis_sd, trellis_hp = dump("trellisnet")
  with pytest.raises(ValueError, match="n_experts=2"):
    from_reference(trellis_sd, {**trellis_hp, "n_experts": 2})
  with pytest.raises(ValueError, match="neither a reference DEQ-Transformer"):
    from_reference({"foo.weight": np.zeros(2)}, {})
  with pytest.raises(TypeError, match="DEQTransformerLM or DEQTrellisNetLM"):
    to_reference(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


VARIANT_DUMPS = os.path.join(TEST_DATA, "reference_variants")


def reference_variants():
  with open(os.path.join(VARIANT_DUMPS, "variants.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("name", sorted(reference_variants()))
def test_reference_variants_match_in_float64(name):
  """Other sizes, seeds and options, run by the reference itself (experiments/tools/reference_dumps.py).

  Pre-LayerNorm, mem_len below and above tgt_len, div_val 1 with d_embed != d_model, local
  attention, untied softmax, no weight norm, TrellisNet kernel 3 with dilation 2, and segments
  solved in sub-sequences (`subseq_len`).
  """
  variant = reference_variants()[name]
  arrays = dict(np.load(os.path.join(VARIANT_DUMPS, f"{name}.npz")))
  hparams = dict(variant["kwargs"], **({"splits": variant["splits"]} if variant["kind"] == "trellis" else {}))
  model = from_reference({k: v for k, v in arrays.items() if "/" not in k}, hparams, param_dtype=F64)
  # The reference's forward argument subseq_len is a config field here.
  model.config = dataclasses.replace(model.config, subseq_len=variant.get("subseq_len", 0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  forward = jax.jit(
    lambda params, tokens, memory: nnx.merge(graphdef, params, rest)(
      tokens[:, :-1], tokens[:, 1:], memory, dtype=F64, max_iter=100, tol=1e-12, rtol=0.0
    )
  )
  memory = model.init_memory(variant["bsz"], F64)
  close = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-8)
  for s in range(3):
    seg = lambda key: arrays[f"seg{s}/{key}"]  # noqa: B023
    assert np.max(seg("broyden_diff")) < 1e-10  # the reference reached its equilibria: a parity case
    tokens = jnp.asarray(np.concatenate([seg("data"), seg("target")[-1:]]).T)
    out = forward(params, tokens, memory)
    close(out.nll, seg("nll").T)
    if variant["kind"] == "transformer":
      close(out.memory.z, time_major_to_batch(seg("new_mems_z")))
      close(out.memory.u, time_major_to_batch(seg("new_mems_u")))
      assert out.memory.z.shape[1] == min((s + 1) * variant["tgt_len"], variant["kwargs"]["mem_len"])
    else:
      h, c = np.split(time_major_to_batch(seg("new_mems")), 2, axis=-1)
      close(out.memory.h, h)
      close(out.memory.c, c)
    memory = out.memory

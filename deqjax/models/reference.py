"""Weights in and out of the 2019 reference code (locuslab/deq at 3fba434, `DEQModel/`).

`from_reference(state_dict, hparams)` builds a deqjax model that computes the reference
model's function with its weights; `to_reference(model)` gives the state_dict and constructor
arguments under which the reference computes ours. Names are the reference's `state_dict()`
names: `DEQTransformerLM` (models/transformers/deq_transformer.py) and `DEQTrellisNetLM`
(models/trellisnets/deq_trellisnet.py) with the training script's `SplitCrossEntropyLoss`
under `criterion.`.

Layouts. The reference's k=1 `Conv1d` weights `[out, in, 1]` are our dense kernels
`[in, out]`; its k-tap convolutions `[out, in, k]` are our `[k, in, out]`; weight norm's
`weight_g` `[out, 1, 1]` is our `g` `[out]`. Its adaptive softmax gives tail cluster i the
head column -i, i.e. `cluster_weight` row n_tail - i; ours gives it row i - 1, so those
rows are stored reversed. Entries the reference keeps twice are aliases: `deq.func.*` and
`deqback.func.*` are `func.*` itself; `func_copy.*` holds `func`'s effective weights
g v / ||v|| (rewritten by the reference at every forward call); tied output weights and
projections repeat the embedding's. Aliases are optional on import and checked when
present; `to_reference` writes them all, as the reference's `state_dict()` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deqjax.models.deq_transformer import DEQTransformerConfig, DEQTransformerLM
from deqjax.models.deq_trellisnet import DEQTrellisNetConfig, DEQTrellisNetLM

_CELL_DENSE = {  # reference module under `func.` -> our weight-normalised dense layer under `cell/`
  "dec_attn.qkv_net": "qkv",
  "dec_attn.r_net": "r_net",
  "dec_attn.o_net": "o_net",
  "pos_ff.ff1_net": "ff1",
  "pos_ff.ff2_net": "ff2",
}
_TRANSFORMER_REQUIRED = ("n_token", "n_head", "d_model", "d_head", "d_inner", "mem_len")
_TRANSFORMER_DEFAULTS = {  # the reference constructor's defaults (n_layer, eval_n_layer, dropout, dropatt: ours)
  "n_layer": 2,
  "eval_n_layer": 2,
  "dropout": 0.0,
  "dropatt": 0.0,
  "tie_weights": True,
  "d_embed": None,
  "div_val": 1,
  "tie_projs": [False],
  "pre_lnorm": False,
  "wnorm": False,
  "tgt_len": None,
  "local_size": 0,
  "pretrain_steps": 1,
  "cutoffs": [],
  "load": "",
}
_TRELLIS_REQUIRED = ("n_token", "ninp", "nhid", "nout")
_TRELLIS_DEFAULTS = {
  "n_layer": 40,
  "kernel_size": 2,
  "emb_dropout": 0.0,
  "dropouti": 0.0,
  "dropout": 0.0,
  "dropouth": 0.0,
  "dropoutl": 0.0,
  "wdrop": 0.0,
  "wnorm": True,
  "tie_weights": True,
  "pretrain_steps": -1,
  "dilation": 1,
  "n_experts": 0,
  "load": "",
  "splits": [],
}


# ----------------------------------------------------------------------------- public API


def from_reference(
  state_dict: Mapping[str, Any], hparams: Mapping[str, Any], *, param_dtype=jnp.float32
) -> DEQTransformerLM | DEQTrellisNetLM:
  """The deqjax model (dropout 0) that computes the reference model given by `state_dict` and `hparams`.

  Args:
    state_dict: reference parameter name -> array (numpy, or anything `np.asarray` takes).
      The kind of model follows from the names (`word_emb.*`: DEQ-Transformer; `trellisnet.*`:
      DEQ-TrellisNet). Aliases are optional and checked against `func.*` when present.
    hparams: the reference constructor's keyword arguments under its names (and, for the
      TrellisNet, `splits` of its criterion); missing optional ones take the reference's defaults.
    param_dtype: dtype of the model's parameters (float64 needs `jax_enable_x64`).

  Returns:
    A `DEQTransformerLM` or `DEQTrellisNetLM`, called as any deqjax model.

  Raises:
    ValueError: unknown or missing hyperparameters; missing, unexpected or wrongly shaped
      entries, or aliases that disagree with `func.*` (every offending name with its shapes).
  """
  arrays = {name: np.asarray(value) for name, value in state_dict.items()}
  kind = kind_of(arrays)
  config, wnorm = _config_from_hparams(kind, dict(hparams))
  model_class = DEQTransformerLM if kind == "transformer" else DEQTrellisNetLM
  abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  abstract_flat = _flat(abstract_params)

  to_ref = _transformer_to_ref if kind == "transformer" else _trellis_to_ref
  expected = jax.eval_shape(lambda flat: to_ref(flat, config, wnorm), abstract_flat)
  canonical = _canonical_names(kind, expected, config)
  _check_names_and_shapes(arrays, expected, canonical)

  to_ours = _transformer_to_ours if kind == "transformer" else _trellis_to_ours
  ours = to_ours(arrays, config, wnorm)
  shapes = {path: tuple(np.shape(value)) for path, value in ours.items()}
  if shapes != {path: tuple(value.shape) for path, value in abstract_flat.items()}:  # a mapping bug, not user error
    raise AssertionError(f"reference mapping produced {shapes}; the model has {abstract_flat}.")
  flat_state = [
    (path, var.replace(jnp.asarray(ours[_path_name(path)], param_dtype)))
    for path, var in nnx.to_flat_state(abstract_params)
  ]
  model = nnx.merge(graphdef, nnx.from_flat_state(flat_state), rest)
  _check_aliases(arrays, to_ref(_flat(nnx.state(model, nnx.Param)), config, wnorm), canonical)
  return model


def to_reference(model: DEQTransformerLM | DEQTrellisNetLM) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state_dict, hparams) of the reference model that computes `model`'s function.

  The state_dict holds every name of the reference's `state_dict()` (weight norm on, aliases
  included), as numpy arrays in the model's parameter dtype; `hparams` are the reference
  constructor's keyword arguments. Arguments that do not change the function take fixed
  values: transformer `tgt_len` = `mem_len`, `eval_n_layer` = `n_layer` = `pretrain_depth`,
  `pretrain_steps` 0, `load` ""; TrellisNet `emb_dropout`, `dropoutl`, `wdrop` 0.
  `from_reference(*to_reference(model))` equals `model`.
  """
  config = getattr(model, "config", None)
  if isinstance(model, DEQTransformerLM) and isinstance(config, DEQTransformerConfig):
    to_ref = _transformer_to_ref
  elif isinstance(model, DEQTrellisNetLM):
    to_ref = _trellis_to_ref
  else:
    raise TypeError(f"to_reference takes a DEQTransformerLM or DEQTrellisNetLM; got {type(model).__name__}.")
  state_dict, hparams = to_ref(_flat(nnx.state(model, nnx.Param)), config, True), reference_hparams(config)
  return {name: np.asarray(value) for name, value in state_dict.items()}, hparams


def reference_hparams(config: DEQTransformerConfig | DEQTrellisNetConfig) -> dict[str, Any]:
  """The reference constructor's keyword arguments for a model of `config` (as `to_reference` gives them)."""
  if isinstance(config, DEQTransformerConfig):
    return _transformer_hparams(config)
  if isinstance(config, DEQTrellisNetConfig):
    return _trellis_hparams(config)
  raise TypeError(
    f"reference_hparams takes a DEQTransformerConfig or DEQTrellisNetConfig; got {type(config).__name__}."
  )


# Hyperparameters that fix the function a reference model computes (the others are training settings).
ARCHITECTURE_HPARAMS = {
  "transformer": (
    "n_token", "n_head", "d_model", "d_head", "d_inner", "d_embed", "div_val", "cutoffs", "tie_weights",
    "tie_projs", "pre_lnorm", "local_size",
  ),
  "trellisnet": ("n_token", "ninp", "nhid", "nout", "kernel_size", "dilation", "tie_weights", "splits"),
}  # fmt: skip


# ----------------------------------------------------------------------------- hyperparameters


def kind_of(arrays: Mapping[str, Any]) -> str:
  """The kind of reference model ("transformer" or "trellisnet") a state_dict's names belong to."""
  if any(name.startswith("word_emb.") for name in arrays):
    return "transformer"
  if any(name.startswith("trellisnet.") for name in arrays) or "encoder.weight" in arrays:
    return "trellisnet"
  raise ValueError(
    "state_dict is neither a reference DEQ-Transformer (no 'word_emb.*' entry) nor a DEQ-TrellisNet (no"
    f" 'trellisnet.*' entry); its first names are {sorted(arrays)[:8]}."
  )


def _with_defaults(kind: str, hparams: dict, required, defaults) -> dict:
  unknown = sorted(set(hparams) - set(required) - set(defaults))
  missing = [name for name in required if name not in hparams]
  if unknown or missing:
    raise ValueError(
      f"hparams of a reference {kind}: unknown {unknown}, missing {missing}; the reference's arguments are"
      f" {sorted(set(required) | set(defaults))}."
    )
  return {**defaults, **hparams}


def _config_from_hparams(kind: str, hparams: dict):
  """(our config with dropout 0, whether the reference uses weight norm)."""
  if kind == "transformer":
    h = _with_defaults(kind, hparams, _TRANSFORMER_REQUIRED, _TRANSFORMER_DEFAULTS)
    if h["n_head"] * h["d_head"] != h["d_model"]:
      raise ValueError(
        f"hparams n_head={h['n_head']} x d_head={h['d_head']} must equal d_model={h['d_model']}: the reference adds"
        " its 3 d_model injection to the 3 n_head d_head queries, keys and values."
      )
    config = DEQTransformerConfig(
      n_token=h["n_token"], d_model=h["d_model"], n_head=h["n_head"], d_head=h["d_head"], d_inner=h["d_inner"],
      d_embed=h["d_embed"], cutoffs=tuple(h["cutoffs"]), div_val=h["div_val"], mem_len=h["mem_len"],
      pre_lnorm=bool(h["pre_lnorm"]), local_size=h["local_size"], tie_weights=bool(h["tie_weights"]),
      tie_projs=tuple(bool(t) for t in h["tie_projs"]), pretrain_depth=h["n_layer"],
    )  # fmt: skip
    return config, bool(h["wnorm"])
  h = _with_defaults(kind, hparams, _TRELLIS_REQUIRED, _TRELLIS_DEFAULTS)
  if h["n_experts"]:
    raise ValueError(f"hparams n_experts={h['n_experts']}: the mixture of softmaxes is not supported (use 0).")
  config = DEQTrellisNetConfig(
    n_token=h["n_token"], d_embed=h["ninp"], nhid=h["nhid"], nout=h["nout"], cutoffs=tuple(h["splits"]),
    kernel_size=h["kernel_size"], dilation=h["dilation"], tie_weights=bool(h["tie_weights"]),
    pretrain_depth=h["n_layer"],
  )  # fmt: skip
  return config, bool(h["wnorm"])


def _transformer_hparams(c: DEQTransformerConfig) -> dict[str, Any]:
  return {
    "n_token": c.n_token, "n_layer": c.pretrain_depth, "eval_n_layer": c.pretrain_depth, "n_head": c.n_head,
    "d_model": c.d_model, "d_head": c.d_head, "d_inner": c.d_inner, "dropout": c.dropout, "dropatt": 0.0,
    "tie_weights": c.tie_weights, "d_embed": c.d_embed, "div_val": c.div_val, "tie_projs": list(c.tie_projs),
    "pre_lnorm": c.pre_lnorm, "wnorm": True, "tgt_len": c.mem_len, "mem_len": c.mem_len,
    "local_size": c.local_size, "pretrain_steps": 0, "cutoffs": list(c.cutoffs), "load": "",
  }  # fmt: skip


def _trellis_hparams(c: DEQTrellisNetConfig) -> dict[str, Any]:
  return {
    "n_token": c.n_token, "n_layer": c.pretrain_depth, "ninp": c.d_embed, "nhid": c.nhid, "nout": c.nout,
    "kernel_size": c.kernel_size, "emb_dropout": 0.0, "dropouti": c.dropout_input, "dropout": c.dropout_output,
    "dropouth": c.dropout_hidden, "dropoutl": 0.0, "wdrop": 0.0, "wnorm": True, "tie_weights": c.tie_weights,
    "pretrain_steps": 0, "dilation": c.dilation, "n_experts": 0, "load": "", "splits": list(c.cutoffs),
  }  # fmt: skip


# ----------------------------------------------------------------------------- layouts


def _flat(params) -> dict[str, Any]:
  """'cell/qkv/v' -> array for every parameter of an nnx state."""
  return {_path_name(path): var.get_value() for path, var in nnx.to_flat_state(params)}


def _path_name(path) -> str:
  return "/".join(str(part) for part in path)


def _conv_in(weight: np.ndarray) -> np.ndarray:
  """Reference conv weight `[out, in, k]` -> ours: `[in, out]` for k = 1 (dense), `[k, in, out]` otherwise."""
  moved = np.transpose(weight, (2, 1, 0))
  return moved[0] if moved.shape[0] == 1 else moved


def _conv_out(kernel, taps: int):
  """Our `[in, out]` (taps 1) or `[k, in, out]` kernel -> the reference's `[out, in, k]`."""
  kernel = kernel[None] if kernel.ndim == 2 else kernel
  assert kernel.shape[0] == taps
  return jnp.transpose(kernel, (2, 1, 0))


def _norm_over_inputs(weight: np.ndarray) -> np.ndarray:
  """Per-output norm of a reference weight `[out, ...]` (the gain that makes weight norm the identity)."""
  return np.sqrt(np.sum(np.square(weight.astype(np.float64)), axis=tuple(range(1, weight.ndim))))


def _weight_norm_in(arrays, prefix: str, ours: str, wnorm: bool) -> dict[str, np.ndarray]:
  """Our {v, g} of the reference's (weight-normed or plain) `prefix` conv."""
  if wnorm:
    return {f"{ours}/v": _conv_in(arrays[f"{prefix}.weight_v"]), f"{ours}/g": arrays[f"{prefix}.weight_g"].reshape(-1)}
  weight = arrays[f"{prefix}.weight"]
  return {f"{ours}/v": _conv_in(weight), f"{ours}/g": _norm_over_inputs(weight)}


def _weight_norm_out(flat, ours: str, prefix: str, taps: int, wnorm: bool) -> tuple[dict, dict]:
  """(the reference's entries of `prefix`, the effective `prefix.weight` of its no-grad copy)."""
  v = _conv_out(flat[f"{ours}/v"], taps)
  g = flat[f"{ours}/g"]
  effective = v * (g / jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2))))[:, None, None]
  own = (
    {f"{prefix}.weight_g": g.reshape(-1, 1, 1), f"{prefix}.weight_v": v} if wnorm else {f"{prefix}.weight": effective}
  )
  return own, {f"{prefix}.weight": effective}


def _cluster_bounds(n_token: int, cutoffs) -> list[int]:
  return [0, *cutoffs, n_token]


# ----------------------------------------------------------------------------- DEQ-Transformer


def _transformer_to_ours(arrays, c: DEQTransformerConfig, wnorm: bool) -> dict[str, np.ndarray]:
  n_clusters = len(c.cutoffs) + 1
  ours = {}
  n_tables = 1 if c.div_val == 1 else n_clusters
  for i in range(n_tables):
    ours[f"embedding/tables/{i}"] = arrays[f"word_emb.emb_layers.{i}.weight"]
    if f"word_emb.emb_projs.{i}" in arrays:
      ours[f"embedding/projs/{i}"] = arrays[f"word_emb.emb_projs.{i}"]
  ours["injection/kernel"] = _conv_in(arrays["inject_conv.weight"])
  ours["injection/bias"] = arrays["inject_conv.bias"]
  for ref, name in _CELL_DENSE.items():
    ours.update(_weight_norm_in(arrays, f"func.{ref}", f"cell/{name}", wnorm))
    if f"func.{ref}.bias" in arrays:
      ours[f"cell/{name}/bias"] = arrays[f"func.{ref}.bias"]
  ours["cell/r_w_bias"] = arrays["func.dec_attn.r_w_bias"]
  ours["cell/r_r_bias"] = arrays["func.dec_attn.r_r_bias"]
  ours.update(_softmax_to_ours(arrays, "crit.", c.n_token, c.cutoffs, c.div_val, c.tie_weights, n_tables))
  for i in range(n_clusters):
    if not c.tie_projs[i] and f"crit.out_projs.{i}" in arrays:
      ours[f"softmax/projs/{i}"] = arrays[f"crit.out_projs.{i}"]
  return ours


def _softmax_to_ours(arrays, prefix, n_token, cutoffs, div_val, tie_weights, n_tables) -> dict[str, np.ndarray]:
  """Biases per cluster, the tail clusters' head rows (reversed) and untied output tables."""
  bounds = _cluster_bounds(n_token, cutoffs)
  ours = {}
  if div_val == 1:
    bias = arrays[f"{prefix}out_layers.0.bias"]
    for i in range(len(bounds) - 1):
      ours[f"softmax/biases/{i}"] = bias[bounds[i] : bounds[i + 1]]
  else:
    for i in range(len(bounds) - 1):
      ours[f"softmax/biases/{i}"] = arrays[f"{prefix}out_layers.{i}.bias"]
  if len(bounds) > 2:
    ours["softmax/cluster_weight"] = arrays[f"{prefix}cluster_weight"][::-1]
    ours["softmax/cluster_bias"] = arrays[f"{prefix}cluster_bias"][::-1]
  if not tie_weights:
    for i in range(n_tables):
      ours[f"softmax/tables/{i}"] = arrays[f"{prefix}out_layers.{i}.weight"]
  return ours


def _transformer_to_ref(flat, c: DEQTransformerConfig, wnorm: bool) -> dict[str, Any]:
  n_clusters = len(c.cutoffs) + 1
  n_tables = 1 if c.div_val == 1 else n_clusters
  sd = {}
  for i in range(n_tables):
    sd[f"word_emb.emb_layers.{i}.weight"] = flat[f"embedding/tables/{i}"]
    if f"embedding/projs/{i}" in flat:
      sd[f"word_emb.emb_projs.{i}"] = flat[f"embedding/projs/{i}"]
  sd["inject_conv.weight"] = _conv_out(flat["injection/kernel"], 1)
  sd["inject_conv.bias"] = flat["injection/bias"]
  acc = jnp.promote_types(flat["injection/kernel"].dtype, jnp.float32)
  sd["pos_emb.inv_freq"] = 1.0 / (10000 ** (jnp.arange(0, c.d_model, 2, dtype=acc) / c.d_model))
  func, func_copy = {}, {}
  for ref, name in _CELL_DENSE.items():
    own, effective = _weight_norm_out(flat, f"cell/{name}", ref, 1, wnorm)
    func.update(own)
    func_copy.update(effective)
    if f"cell/{name}/bias" in flat:
      func[f"{ref}.bias"] = func_copy[f"{ref}.bias"] = flat[f"cell/{name}/bias"]
  for bias in ("r_w_bias", "r_r_bias"):
    func[f"dec_attn.{bias}"] = func_copy[f"dec_attn.{bias}"] = flat[f"cell/{bias}"]
  for prefix, entries in (
    ("func.", func),
    ("func_copy.", func_copy),
    ("deq.func.", func),
    ("deqback.func.", func),
    ("deqback.func_copy.", func_copy),
  ):
    sd.update({prefix + name: value for name, value in entries.items()})
  tables = [sd[f"word_emb.emb_layers.{i}.weight"] for i in range(n_tables)] if c.tie_weights else None
  sd.update(_softmax_to_ref(flat, "crit.", c.n_token, c.cutoffs, c.div_val, tables))
  for i in range(n_clusters):
    if f"softmax/projs/{i}" in flat:
      sd[f"crit.out_projs.{i}"] = flat[f"softmax/projs/{i}"]
    elif c.tie_projs[i] and f"embedding/projs/{min(i, n_tables - 1)}" in flat:
      sd[f"crit.out_projs.{i}"] = flat[f"embedding/projs/{min(i, n_tables - 1)}"]
  return sd


def _softmax_to_ref(flat, prefix, n_token, cutoffs, div_val, tied_tables) -> dict[str, Any]:
  """The reference softmax's entries; `tied_tables`: the embedding's tables, or None (untied)."""
  bounds = _cluster_bounds(n_token, cutoffs)
  out = {}
  if div_val == 1:
    out[f"{prefix}out_layers.0.bias"] = jnp.concatenate([flat[f"softmax/biases/{i}"] for i in range(len(bounds) - 1)])
  else:
    for i in range(len(bounds) - 1):
      out[f"{prefix}out_layers.{i}.bias"] = flat[f"softmax/biases/{i}"]
  if len(bounds) > 2:
    out[f"{prefix}cluster_weight"] = flat["softmax/cluster_weight"][::-1]
    out[f"{prefix}cluster_bias"] = flat["softmax/cluster_bias"][::-1]
  n_tables = 1 if div_val == 1 else len(bounds) - 1
  for i in range(n_tables):
    out[f"{prefix}out_layers.{i}.weight"] = flat[f"softmax/tables/{i}"] if tied_tables is None else tied_tables[i]
  return out


# ----------------------------------------------------------------------------- DEQ-TrellisNet

_TRELLIS_FUNC_ALIASES = ("trellisnet.deq.func.", "trellisnet.deqback.func.")
_TRELLIS_COPY_ALIASES = ("trellisnet.func_copy.", "trellisnet.deqback.func_copy.")


def _trellis_to_ours(arrays, c: DEQTrellisNetConfig, wnorm: bool) -> dict[str, np.ndarray]:
  ours = {"embedding/tables/0": arrays["encoder.weight"]}
  ours.update(_weight_norm_in(arrays, "trellisnet.inject_conv", "cell/inject", wnorm))
  ours["cell/inject/bias"] = arrays["trellisnet.inject_conv.bias"]
  ours.update(_weight_norm_in(arrays, "trellisnet.func.full_conv", "cell/recur", wnorm))
  ours["cell/recur/bias"] = arrays["trellisnet.func.full_conv.bias"]
  renamed = {"crit.out_layers.0.bias": arrays["decoder.bias"]}
  if not c.tie_weights:
    renamed["crit.out_layers.0.weight"] = arrays["decoder.weight"]
  if c.cutoffs:
    renamed["crit.cluster_weight"] = arrays["criterion.tail_vectors"]
    renamed["crit.cluster_bias"] = arrays["criterion.tail_bias"]
  ours.update(_softmax_to_ours(renamed, "crit.", c.n_token, c.cutoffs, 1, c.tie_weights, 1))
  return ours


def _trellis_to_ref(flat, c: DEQTrellisNetConfig, wnorm: bool) -> dict[str, Any]:
  sd = {"encoder.weight": flat["embedding/tables/0"]}
  own, _ = _weight_norm_out(flat, "cell/inject", "trellisnet.inject_conv", c.kernel_size, wnorm)
  sd.update(own)
  sd["trellisnet.inject_conv.bias"] = flat["cell/inject/bias"]
  func, func_copy = _weight_norm_out(flat, "cell/recur", "full_conv", c.kernel_size, wnorm)
  func["full_conv.bias"] = func_copy["full_conv.bias"] = flat["cell/recur/bias"]
  for prefixes, entries in ((("trellisnet.func.", *_TRELLIS_FUNC_ALIASES), func), (_TRELLIS_COPY_ALIASES, func_copy)):
    for prefix in prefixes:
      sd.update({prefix + name: value for name, value in entries.items()})
  softmax = _softmax_to_ref(flat, "", c.n_token, c.cutoffs, 1, [sd["encoder.weight"]] if c.tie_weights else None)
  sd["decoder.weight"] = softmax["out_layers.0.weight"]
  sd["decoder.bias"] = softmax["out_layers.0.bias"]
  if c.cutoffs:
    sd["criterion.tail_vectors"] = softmax["cluster_weight"]
    sd["criterion.tail_bias"] = softmax["cluster_bias"]
  return sd


# ----------------------------------------------------------------------------- checks


def _canonical_names(kind: str, expected: Mapping[str, Any], config) -> set[str]:
  """The entries an import needs; the rest of `expected` are aliases, derived from these."""
  alias_prefixes = (
    ("func_copy.", "deq.func.", "deqback.func.", "deqback.func_copy.", "pos_emb.")
    if kind == "transformer"
    else _TRELLIS_FUNC_ALIASES + _TRELLIS_COPY_ALIASES
  )
  names = {name for name in expected if not name.startswith(alias_prefixes)}
  if kind == "transformer":
    n_tables = 1 if config.div_val == 1 else len(config.cutoffs) + 1
    if config.tie_weights:
      names -= {f"crit.out_layers.{i}.weight" for i in range(n_tables)}
    names -= {f"crit.out_projs.{i}" for i in range(len(config.cutoffs) + 1) if config.tie_projs[i]}
  elif config.tie_weights:
    names.discard("decoder.weight")
  return names


def _check_names_and_shapes(arrays: Mapping[str, np.ndarray], expected: Mapping[str, Any], canonical: set[str]):
  missing = sorted(canonical - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  wrong = sorted(
    name for name in set(arrays) & set(expected) if tuple(arrays[name].shape) != tuple(expected[name].shape)
  )
  if missing or unexpected or wrong:
    parts = []
    if missing:
      parts.append("missing " + ", ".join(f"{n} {tuple(expected[n].shape)}" for n in missing))
    if unexpected:
      parts.append("unexpected " + ", ".join(f"{n} {tuple(arrays[n].shape)}" for n in unexpected))
    if wrong:
      parts.append(
        "wrong shapes "
        + ", ".join(f"{n} {tuple(arrays[n].shape)} (expected {tuple(expected[n].shape)})" for n in wrong)
      )
    raise ValueError("state_dict does not fit the hparams: " + "; ".join(parts) + ".")


def _check_aliases(arrays: Mapping[str, np.ndarray], derived: Mapping[str, Any], canonical: set[str]):
  """Present aliases equal what the canonical entries imply (func_copy and inv_freq to rounding)."""
  bad = []
  for name in sorted(set(arrays) - canonical):
    given, implied = arrays[name].astype(np.float64), np.asarray(derived[name], np.float64)
    # Weights that pass through weight norm (func_copy's; func's own without wnorm) and the
    # frequency buffer are recomputed here, so they agree to rounding; plain aliases exactly.
    parts = name.split(".")
    computed = name == "pos_emb.inv_freq" or (parts[-1] == "weight" and ("func" in parts or "func_copy" in parts))
    scale = float(np.max(np.abs(implied), initial=0.0))
    tolerance = 1e-5 * scale + 1e-7 if computed else 0.0
    error = float(np.max(np.abs(given - implied), initial=0.0))
    if not error <= tolerance:
      bad.append(f"{name} (off by {error:.3g})")
  if bad:
    raise ValueError(
      "state_dict aliases disagree with the entries they repeat: " + ", ".join(bad) + ". (func_copy.* must hold"
      " func.*'s effective weights g v / ||v||; the reference rewrites it at every forward call, so a stale copy"
      " can be dropped from the state_dict.)"
    )

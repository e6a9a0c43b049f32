"""The model registry: config names -> (config dataclass, model class), and from an ml_collections config to the
model's dataclass config. Configs (`experiments.configs`) and the trainer both read it; it builds no model."""

from __future__ import annotations

import dataclasses
import types
import typing

import ml_collections

from deqjax.models import (
  TCN,
  DEQTransformerClassifier,
  DEQTransformerClassifierConfig,
  DEQTransformerConfig,
  DEQTransformerLM,
  DEQTrellisNetConfig,
  DEQTrellisNetLM,
  RecurrentClassifier,
  RecurrentConfig,
  TCNConfig,
  TransformerXLConfig,
  TransformerXLLM,
)

MODELS = {
  "deq_transformer": (DEQTransformerConfig, DEQTransformerLM),
  "transformer_xl": (TransformerXLConfig, TransformerXLLM),
  "deq_trellisnet": (DEQTrellisNetConfig, DEQTrellisNetLM),
  "deq_transformer_classifier": (DEQTransformerClassifierConfig, DEQTransformerClassifier),
  "tcn": (TCNConfig, TCN),
  "recurrent": (RecurrentConfig, RecurrentClassifier),
}
# "deq": solve for the equilibrium; "unrolled": the same weight-tied cell applied pretrain_depth times
# (the weight-tied Transformer-XL and the L-layer TrellisNet baselines); "layers": ordinary networks
# (untied stacks, TCNs, RNNs), which only train in this mode.
EXECUTIONS = ("deq", "unrolled", "layers")
LAYER_MODELS = ("transformer_xl", "tcn", "recurrent")


def all_model_fields(model_name: str, fields: dict) -> dict:
  """`fields` with every other field of the model's config at its default (required ones stay absent)."""
  config_class, _ = MODELS[model_name]
  defaults = {}
  for field in dataclasses.fields(config_class):
    if field.default is not dataclasses.MISSING:
      defaults[field.name] = field.default
    elif field.default_factory is not dataclasses.MISSING:
      defaults[field.name] = field.default_factory()
  return {**defaults, **fields}


def complete_model_config(config: ml_collections.ConfigDict) -> None:
  """Adds every field of `config.model_name`'s config that `config.model` leaves out, at its default, so that
  any of them can be set on the command line (`--config.model.norm=spectral`). A field whose default is
  None becomes a typed placeholder (ml_collections cannot override a bare None)."""
  if config.model_name not in MODELS:
    return  # named by the config check
  config_class, _ = MODELS[config.model_name]
  hints = typing.get_type_hints(config_class)
  for name, value in all_model_fields(config.model_name, {}).items():
    if name in config.model:
      continue
    unset = ml_collections.config_dict.placeholder(_overridable_type(hints[name]))
    config.model[name] = unset if value is None else value


def _overridable_type(hint) -> type:
  """The type a command-line value of a field annotated `hint` (e.g. `int | None`) is parsed as."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    kinds = [h for h in typing.get_args(hint) if h is not type(None)]
    hint = kinds[0] if len(kinds) == 1 else object
  origin = typing.get_origin(hint) or hint
  return origin if origin in (int, float, str, bool, tuple) else object


def architecture(config: ml_collections.ConfigDict):
  """The model's dataclass config from `config.model_name` and `config.model`; unknown fields are errors."""
  if config.model_name not in MODELS:
    raise ValueError(f"Unknown model_name={config.model_name!r}; expected one of {sorted(MODELS)}.")
  config_class, _ = MODELS[config.model_name]
  fields = dict(config.model)
  known = {f.name for f in dataclasses.fields(config_class)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"Unknown field(s) {unknown} in config.model for {config.model_name}; known: {sorted(known)}.")
  if "cutoffs" in fields:
    fields["cutoffs"] = tuple(fields["cutoffs"])
  if config.execution not in EXECUTIONS:
    raise ValueError(f"Unknown execution={config.execution!r}; expected one of {list(EXECUTIONS)}.")
  if (config.execution == "layers") != (config.model_name in LAYER_MODELS):
    raise ValueError(f"execution={config.execution!r} does not fit model_name={config.model_name!r}.")
  return config_class(**fields)

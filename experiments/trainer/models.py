"""From an ml_collections config to a model instance (the names and config classes: `experiments.model_configs`)."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from experiments.model_configs import MODELS, architecture


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
  _, model_class = MODELS[config.model_name]
  return model_class(architecture(config), rngs=rngs)


def abstract_model(config: ml_collections.ConfigDict):
  """The model with ShapeDtypeStructs for weights (nothing allocated)."""
  return nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))


def count_parameters(model) -> tuple[int, int]:
  """(all trainable parameters, those outside the embedding and the softmax, where the model has them)."""
  size = lambda module: sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
  total = size(model)
  return total, total - sum(size(getattr(model, name)) for name in ("embedding", "softmax") if hasattr(model, name))

"""Flax NNX building blocks for DEQ language models (the core `deqjax` stays Flax-free)."""

from deqjax.nn.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from deqjax.nn.attention import layer_norm, rel_shift, relative_attention, sinusoid_positions
from deqjax.nn.deq_layer import solve_cell
from deqjax.nn.dropout import apply_mask, variational_mask
from deqjax.nn.transformer_cell import DEQTransformerCell
from deqjax.nn.trellisnet_cell import DEQTrellisNetCell
from deqjax.nn.weight_norm import WeightNormConv1D, WeightNormDense, causal_conv, dense

__all__ = [
  "AdaptiveEmbedding",
  "DEQTransformerCell",
  "DEQTrellisNetCell",
  "ProjectedAdaptiveLogSoftmax",
  "WeightNormConv1D",
  "WeightNormDense",
  "apply_mask",
  "causal_conv",
  "dense",
  "layer_norm",
  "rel_shift",
  "relative_attention",
  "sinusoid_positions",
  "solve_cell",
  "variational_mask",
]

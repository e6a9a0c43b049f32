"""Language models and sequence classifiers built from `deqjax.nn`."""

from deqjax.models.deq_transformer import (
  DEQTransformerClassifier,
  DEQTransformerClassifierConfig,
  DEQTransformerConfig,
  DEQTransformerLM,
  Memory,
)
from deqjax.models.deq_trellisnet import DEQTrellisNetConfig, DEQTrellisNetLM, TrellisMemory
from deqjax.models.output import ModelOutput
from deqjax.models.reference import from_reference, reference_hparams, to_reference
from deqjax.models.sequence import TCN, RecurrentClassifier, RecurrentConfig, TCNConfig
from deqjax.models.transformer_xl import TransformerXLConfig, TransformerXLLM

__all__ = [
  "TCN",
  "DEQTransformerClassifier",
  "DEQTransformerClassifierConfig",
  "DEQTransformerConfig",
  "DEQTransformerLM",
  "DEQTrellisNetConfig",
  "DEQTrellisNetLM",
  "Memory",
  "ModelOutput",
  "RecurrentClassifier",
  "RecurrentConfig",
  "TCNConfig",
  "TrellisMemory",
  "TransformerXLConfig",
  "TransformerXLLM",
  "from_reference",
  "reference_hparams",
  "to_reference",
]

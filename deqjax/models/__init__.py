"""Language models and sequence classifiers built from `deqjax.nn`."""

from deqjax.models.deq_transformer import (
  DEQTransformerClassifier,
  DEQTransformerClassifierConfig,
  DEQTransformerConfig,
  DEQTransformerLM,
  LMOutput,
  Memory,
)
from deqjax.models.deq_trellisnet import DEQTrellisNetConfig, DEQTrellisNetLM, TrellisMemory, TrellisOutput
from deqjax.models.reference import from_reference, reference_hparams, to_reference
from deqjax.models.sequence import TCN, ClassifierOutput, RecurrentClassifier, RecurrentConfig, TCNConfig
from deqjax.models.transformer_xl import TransformerXLConfig, TransformerXLLM, XLOutput

__all__ = [
  "TCN",
  "ClassifierOutput",
  "DEQTransformerClassifier",
  "DEQTransformerClassifierConfig",
  "DEQTransformerConfig",
  "DEQTransformerLM",
  "DEQTrellisNetConfig",
  "DEQTrellisNetLM",
  "LMOutput",
  "Memory",
  "RecurrentClassifier",
  "RecurrentConfig",
  "TCNConfig",
  "TrellisMemory",
  "TrellisOutput",
  "TransformerXLConfig",
  "TransformerXLLM",
  "XLOutput",
  "from_reference",
  "reference_hparams",
  "to_reference",
]

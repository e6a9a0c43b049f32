"""Language models built from `deqjax.nn`."""

from deqjax.models.deq_transformer import DEQTransformerConfig, DEQTransformerLM, LMOutput, Memory
from deqjax.models.deq_trellisnet import DEQTrellisNetConfig, DEQTrellisNetLM, TrellisMemory, TrellisOutput
from deqjax.models.transformer_xl import TransformerXLConfig, TransformerXLLM, XLOutput

__all__ = [
  "DEQTransformerConfig",
  "DEQTransformerLM",
  "DEQTrellisNetConfig",
  "DEQTrellisNetLM",
  "LMOutput",
  "Memory",
  "TrellisMemory",
  "TrellisOutput",
  "TransformerXLConfig",
  "TransformerXLLM",
  "XLOutput",
]

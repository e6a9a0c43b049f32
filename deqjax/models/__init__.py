"""Language models built from `deqjax.nn`."""

from deqjax.models.deq_transformer import DEQTransformerConfig, DEQTransformerLM, LMOutput, Memory

__all__ = ["DEQTransformerConfig", "DEQTransformerLM", "LMOutput", "Memory"]

"""Data: WikiText through TFDS (read from local files), the ordered language-model stream, copy memory.

`OrderedLMStream` and `copy_memory` need numpy only; the WikiText names need the `data` extra
(tensorflow-datasets) and are imported on first use.
"""

import importlib

from deqjax.data import copy_memory
from deqjax.data.lm_stream import OrderedLMStream

_WIKITEXT = ("EOS", "UNK", "WikitextData", "build_vocab", "encode", "load_wikitext", "tokenize")


def __getattr__(name):
  if name in _WIKITEXT:
    return getattr(importlib.import_module("deqjax.data.wikitext"), name)
  raise AttributeError(f"module 'deqjax.data' has no attribute {name!r}")


__all__ = ["OrderedLMStream", "copy_memory", *_WIKITEXT]

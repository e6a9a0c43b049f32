"""Data: WikiText through TFDS (read from local files) and the ordered language-model stream."""

from deqjax.data.lm_stream import OrderedLMStream
from deqjax.data.wikitext import EOS, UNK, WikitextData, build_vocab, encode, load_wikitext, tokenize

__all__ = ["EOS", "UNK", "OrderedLMStream", "WikitextData", "build_vocab", "encode", "load_wikitext", "tokenize"]

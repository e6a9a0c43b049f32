"""The paper's numbers (Bai, Kolter & Koltun, 2019), one schema for every study, keyed like the configs.

A row's key is its config's file name: `experiments/configs/<study>/<row>.py` has `config.study`
and `config.row`, its workdir is `<root>/<study>/<row>`, and its table line reads `PAPER[study][row]`.
The WikiText-2 rows are compared with the WikiText-103 row of the same kind of model
(`COUNTERPART`), the only table the paper has for them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One line of one of the paper's tables.

  Attributes:
    label: the model as the paper names it.
    params_m, non_embedding_m: parameters, all and outside the embedding and softmax (millions).
    ppl: test perplexity (WikiText-103); loss: test loss (copy memory).
    memory_gb: training memory, embeddings excluded, batch 15 at length 150 (WikiText-103).
  """

  label: str
  params_m: float | None = None
  non_embedding_m: float | None = None
  ppl: float | None = None
  loss: float | None = None
  memory_gb: float | None = None


PAPER = {
  "wikitext103": {
    "transformer_xl_small_4l": PaperRow("Transformer-XL small, 4 layers", 139, 4.9, ppl=35.8, memory_gb=4.8),
    "transformer_xl_small_tied_16l": PaperRow(
      "Transformer-XL small, weight-tied 16 layers", 138, 4.5, ppl=34.9, memory_gb=6.8
    ),
    "deq_transformer_small": PaperRow("DEQ-Transformer small", 138, 4.5, ppl=32.4, memory_gb=1.1),
    "transformer_xl_medium_16l": PaperRow("Transformer-XL medium, 16 layers", 165, 44, ppl=24.3, memory_gb=8.5),
    "deq_transformer_medium": PaperRow("DEQ-Transformer medium", 172, 43, ppl=24.2, memory_gb=2.7),
    "transformer_xl_medium_adaptive_18l": PaperRow(
      "Transformer-XL medium, 18 layers, adaptive", 110, 72, ppl=23.6, memory_gb=9.0
    ),
    "deq_transformer_medium_adaptive": PaperRow("DEQ-Transformer medium, adaptive", 110, 70, ppl=23.2, memory_gb=3.7),
    "trellisnet_70l": PaperRow("70-layer TrellisNet", 180, 45, ppl=29.2, memory_gb=24.7),
    "deq_trellisnet": PaperRow("DEQ-TrellisNet", 180, 45, ppl=29.0, memory_gb=3.3),
  },
  "copy_memory": {  # Table 1, T = 400
    "deq_transformer": PaperRow("DEQ-Transformer", 0.014, loss=3.5e-6),
    "tcn": PaperRow("TCN", 0.016, loss=2.7e-5),
    "lstm": PaperRow("LSTM", 0.014, loss=0.0501),
    "gru": PaperRow("GRU", 0.014, loss=0.0491),
  },
}

# WikiText-2 rows (CPU scale) -> the WikiText-103 row of the same kind of model.
COUNTERPART = {
  "deq_transformer": "deq_transformer_small",
  "transformer_xl_tied": "transformer_xl_small_tied_16l",
  "transformer_xl_untied": "transformer_xl_small_4l",
  "deq_trellisnet": "deq_trellisnet",
  "trellisnet": "trellisnet_70l",
}


def paper_row(study: str, row: str) -> PaperRow:
  """The paper's line for config row `row` of `study` (WikiText-2 rows: their WikiText-103 counterpart)."""
  if study == "wikitext2":
    study, row = "wikitext103", COUNTERPART[row]
  return PAPER[study][row]

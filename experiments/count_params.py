r"""Counts a config's trainable parameters without allocating the weights.

    python -m experiments.count_params --config=experiments/configs/wikitext103/deq_transformer_medium_adaptive.py

The last line is `params=<int> non_embedding=<int>` (non-embedding: outside the
embedding and the softmax, as the paper's table counts).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments.analysis.paper import PAPER
from experiments.trainer.models import abstract_model, count_parameters

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = FLAGS.config
  total, non_embedding = count_parameters(abstract_model(config))
  paper = PAPER.get(config.get("study", ""), {}).get(config.get("row", ""))
  if paper is not None and paper.non_embedding_m is not None:  # a WikiText-103 row
    off = lambda count, paper_m: f"{100 * (count / 1e6 / paper_m - 1):+.1f}%"
    print(
      f"{config.row} ({config.model_name}, {config.execution}): {total / 1e6:.2f}M params,"
      f" {non_embedding / 1e6:.2f}M non-embedding;"
      f" paper's table: {paper.params_m}M / {paper.non_embedding_m}M"
      f" ({off(total, paper.params_m)} / {off(non_embedding, paper.non_embedding_m)})"
    )
  print(f"params={total} non_embedding={non_embedding}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

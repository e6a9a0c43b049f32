"""Figures of the experiment scripts: matplotlib without a display, PNGs small enough to keep in the repository."""

from __future__ import annotations

import os


def subplots(*args, **kwargs):
  """`matplotlib.pyplot.subplots` on the Agg backend (no display needed; matplotlib is imported on first use)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(*args, **kwargs)


def save(fig, path: str, dpi: int = 80) -> None:
  """Writes `fig` to `path` as a PNG, making its folder if missing, and closes it."""
  import matplotlib.pyplot as plt

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)

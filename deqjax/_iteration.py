"""Plain (optionally damped) fixed-point iteration: z <- z + damping (f(z) - z)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Iteration:
  """Picard iteration; `damping` = 1 is z <- f(z).

  Attributes:
    damping: step size on the residual, in (0, 1].
  """

  damping: float = 1.0

  def __post_init__(self):
    if not 0 < self.damping <= 1:
      raise ValueError(f"Iteration damping must be in (0, 1]; got damping={self.damping!r}.")

  def init(self, z, g, max_iter):
    del z, g, max_iter
    return ()

  def direction(self, state, z, g):
    del state, z
    return self.damping * g

  def update(self, state, z, g, dz, dg, active):
    del z, g, dz, dg, active
    return state

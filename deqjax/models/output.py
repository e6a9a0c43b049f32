"""What every model returns, and the one call signature they share.

Every model is called as

    model(tokens, targets, memory, *, dropout_key=None, dtype=jnp.float32, unrolled=False,
          jac_key=None, **solver_overrides) -> ModelOutput

with `tokens`, `targets` `[b, q]`. A `dropout_key` makes it a training call. `unrolled` runs a
DEQ model's cell `pretrain_depth` times instead of solving for its equilibrium; `jac_key` asks a
DEQ model for the Jacobian penalty; `solver_overrides` are `deqjax.fixed_point` options for this
call. Models without an equilibrium (untied stacks, TCNs, RNNs) take the same arguments and refuse
the DEQ-only ones (`unrolled=True`, a `jac_key`, solver overrides) with a TypeError; a DEQ
model's unrolled call likewise refuses solver overrides (it solves nothing; `settle_iters` is its own).

The language models also share `body(x, memory, *, dropout_key=None, unrolled=False, jac_key=None,
**solver_overrides) -> (features, new_memory, info, extras)` (`deqjax.nn.deq_layer.CellExtras`: the
Jacobian penalty and the fixed-point correction's outputs): everything between the
(dropped-out) embeddings `x` `[b, q, d_in]` and the output dropout and softmax, which is what the
paper's memory tables measure; and `init_memory(batch, dtype, length=0)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from deqjax import SolveInfo


class ModelOutput(NamedTuple):
  """A model's output for one batch.

  Attributes:
    nll: `[b, q]` negative log-likelihood of each target (float32, or float64 for a float64 model).
    memory: what the next segment reads (the same structure as `init_memory`'s; `()` for models
      that carry nothing between batches).
    info: the forward `SolveInfo` per sample of a DEQ model solving for its equilibrium; None
      otherwise (unrolled or layered calls).
    jac_loss: `[b]` Jacobian penalty ||df/dz||_F^2 / n at z*, when a `jac_key` was given.
    logits: `[b, q, n_classes]` of the per-position classifiers; None for the language models
      (their adaptive softmax never forms full logits).
    correction_nll: `[K, b, q]` the NLL of the same targets read from the fixed-point correction's
      K outputs (training solves with `correction_steps`), else None.
    spectral_radius: `[b]` the spectral radius estimate of df/dz at z* when the call passed a
      `radius_key` (a DEQ option, passed like the solver overrides), else None.
  """

  nll: jax.Array
  memory: Any = ()
  info: SolveInfo | None = None
  jac_loss: jax.Array | None = None
  logits: jax.Array | None = None
  correction_nll: jax.Array | None = None
  spectral_radius: jax.Array | None = None


def refuse_deq_options(model: str, unrolled: bool, jac_key, solver_overrides: dict) -> None:
  """TypeError when a model without an equilibrium is asked for DEQ-only options."""
  asked = []
  if unrolled:
    asked.append("unrolled=True")
  if jac_key is not None:
    asked.append("jac_key")
  asked += sorted(solver_overrides)
  if asked:
    raise TypeError(f"{model} has no equilibrium to solve; it takes none of {asked} (DEQ models' options).")

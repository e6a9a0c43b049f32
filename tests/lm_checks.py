"""Checks shared by the language-model tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

F64 = jnp.float64
# Solves tight enough that the equilibrium is exact to float64 test tolerances.
TIGHT = dict(max_iter=150, tol=1e-12, rtol=0.0, backward_max_iter=150, backward_tol=1e-12, backward_rtol=0.0)


def count(tree) -> int:
  """Trainable parameters of a module (abstract or concrete)."""
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(tree, nnx.Param)))


def unit_scale_embeddings(model):
  """At tiny widths the 0.02 embedding init leaves the equilibrium nearly input-independent;
  unit-scale embeddings make every position's input matter."""
  tables = nnx.state(model.embedding.tables, nnx.Param)
  nnx.update(model.embedding.tables, jax.tree.map(lambda t: t * 25.0, tables))
  return model


@functools.cache
def jitted(**options):
  """`model(inputs, targets, memory, **options)` compiled once per shape (an eager call recompiles its solver)."""
  return nnx.jit(lambda model, inputs, targets, memory: model(inputs, targets, memory, **options))


def solve_options(unrolled: bool) -> dict:
  """TIGHT for a solve; nothing for an unrolled call, which refuses solver options (it solves nothing)."""
  return {} if unrolled else TIGHT


def assert_causal(model, tokens, memory, unrolled, position, min_change):
  """Changing token `position` leaves the NLL of earlier positions unchanged and changes later ones.

  Exact (1e-12) unrolled; within the solver's 1e-12 residual (1e-9) at equilibrium.
  """
  changed = tokens.at[:, position].set((tokens[:, position] + 7) % model.config.n_token)
  atol = 1e-12 if unrolled else 1e-9
  forward = jitted(unrolled=unrolled, dtype=F64, **solve_options(unrolled))
  a = forward(model, tokens, tokens, memory).nll
  b = forward(model, changed, tokens, memory).nll
  np.testing.assert_allclose(a[:, :position], b[:, :position], atol=atol, rtol=0)
  assert float(jnp.max(jnp.abs(a[:, position:] - b[:, position:]))) > min_change

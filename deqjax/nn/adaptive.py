"""Adaptive input embedding and projected adaptive log-softmax (Baevski & Auli; Transformer-XL).

The vocabulary is split by frequency at `cutoffs` into clusters; cluster i
has embedding width d_embed // div_val**i and a projection to d_proj. The
softmax reuses the embedding tables as output weights (tied) and, for the
tail clusters, the embedding projections too; the head projection is its own
parameter. Projections are stored `[d_proj, d_i]`: the embedding maps
e -> e @ P^T, the softmax h -> h @ P.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def check_cutoffs(n_token: int, cutoffs, div_val: int) -> tuple[int, ...]:
  """Validated cluster boundaries (0, *cutoffs, n_token)."""
  cutoffs = tuple(int(c) for c in cutoffs)
  if any(b <= a for a, b in zip((0,) + cutoffs, cutoffs + (n_token,), strict=True)):
    raise ValueError(
      f"cutoffs must be strictly increasing, positive and below the vocabulary size; got cutoffs={list(cutoffs)}"
      f" with n_token={n_token}."
    )
  if isinstance(div_val, bool) or not isinstance(div_val, int) or div_val < 1:
    raise ValueError(f"div_val must be an int >= 1; got div_val={div_val!r}.")
  return (0,) + cutoffs + (n_token,)


def check_tie_projs(tie_projs, n_clusters: int) -> tuple[bool, ...]:
  """Per-cluster projection tying (None: `default_tie_projs`); missing trailing entries are untied, as the reference."""
  if tie_projs is None:
    return default_tie_projs(n_clusters)
  tie_projs = tuple(tie_projs)
  if len(tie_projs) > n_clusters or not all(isinstance(t, bool) for t in tie_projs):
    raise ValueError(f"tie_projs must hold at most {n_clusters} bools (one per cluster); got {list(tie_projs)}.")
  return tie_projs + (False,) * (n_clusters - len(tie_projs))


def cluster_dims(d_embed: int, n_clusters: int, div_val: int) -> list[int]:
  return [d_embed // div_val**i for i in range(n_clusters)]


class AdaptiveEmbedding(nnx.Module):
  """tokens `[...]` -> `[..., d_proj]`, scaled by sqrt(d_proj) (Transformer-XL) unless `scale=False`."""

  def __init__(self, n_token, d_embed, d_proj, cutoffs, div_val=1, *, scale: bool = True, rngs: nnx.Rngs):
    self.bounds = check_cutoffs(n_token, cutoffs, div_val) if div_val > 1 else (0, n_token)
    n_clusters = len(self.bounds) - 1
    dims = cluster_dims(d_embed, n_clusters, div_val)
    self.tables = nnx.List(
      nnx.Param(0.02 * jax.random.normal(rngs.params(), (hi - lo, dim), jnp.float32))
      for lo, hi, dim in zip(self.bounds[:-1], self.bounds[1:], dims, strict=True)
    )
    needs_proj = div_val > 1 or d_proj != d_embed
    self.projs = nnx.List(
      nnx.Param(0.01 * jax.random.normal(rngs.params(), (d_proj, dim), jnp.float32)) for dim in dims if needs_proj
    )
    self.scale = d_proj**0.5 if scale else 1.0

  def __call__(self, tokens: jax.Array) -> jax.Array:
    out = 0.0
    for i, (lo, hi) in enumerate(zip(self.bounds[:-1], self.bounds[1:], strict=True)):
      inside = (tokens >= lo) & (tokens < hi)
      emb = self.tables[i][...][jnp.clip(tokens - lo, 0, hi - lo - 1)]
      if len(self.projs):
        emb = emb @ self.projs[i][...].T
      out = out + jnp.where(inside[..., None], emb, 0.0)
    return out * self.scale


def default_tie_projs(n_clusters: int) -> tuple[bool, ...]:
  """The reference training script's choice: the head projection untied, the tail clusters' tied."""
  return (False,) + (True,) * (n_clusters - 1)


class ProjectedAdaptiveLogSoftmax(nnx.Module):
  """Log-probabilities over the vocabulary, normally tied to an `AdaptiveEmbedding`.

  Own parameters: one bias per word, the cluster tokens' weights and biases in
  the head, the projections of the clusters whose `tie_projs` entry is False
  (default: the head's only) and, with `tie_weights=False`, output tables of
  the embedding's shapes. Tied weights are read from the embedding passed at
  call time, so they exist once. Projections are `[d_proj, d_i]`, applied as
  h -> h @ P; tied ones are the embedding's projection of the same cluster
  (its single projection when div_val is 1).
  """

  def __init__(
    self,
    n_token,
    d_embed,
    d_proj,
    cutoffs,
    div_val=1,
    *,
    tie_weights: bool = True,
    tie_projs: tuple[bool, ...] | None = None,
    rngs: nnx.Rngs,
  ):
    # Clusters follow the cutoffs even with div_val = 1 (one embedding table, sliced by rows).
    self.bounds = check_cutoffs(n_token, cutoffs, div_val)
    n_clusters = len(self.bounds) - 1
    self.tie_projs = check_tie_projs(tie_projs, n_clusters)
    self.biases = nnx.List(
      nnx.Param(jnp.zeros((hi - lo,), jnp.float32)) for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True)
    )
    dims = cluster_dims(d_embed, n_clusters, div_val) if div_val > 1 else [d_embed] * n_clusters
    self.cluster_weight = nnx.Param(jnp.zeros((n_clusters - 1, dims[0]), jnp.float32)) if n_clusters > 1 else None
    self.cluster_bias = nnx.Param(jnp.zeros((n_clusters - 1,), jnp.float32)) if n_clusters > 1 else None
    needs_proj = div_val > 1 or d_proj != d_embed
    self.projs = nnx.Dict(
      {
        str(i): nnx.Param(0.01 * jax.random.normal(rngs.params(), (d_proj, dims[i]), jnp.float32))
        for i in range(n_clusters)
        if needs_proj and not self.tie_projs[i]
      }
    )
    sizes = [hi - lo for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True)]
    table_shapes = [(n_token, d_embed)] if div_val == 1 else list(zip(sizes, dims, strict=True))
    self.tables = (
      None
      if tie_weights
      else nnx.List(nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)) for shape in table_shapes)
    )

  def _projection(self, i, embedding: AdaptiveEmbedding):
    """Cluster i's projection `[d_proj, d_i]`, or None (no projection)."""
    if str(i) in self.projs:
      return self.projs[str(i)][...]
    if not self.tie_projs[i] or not len(embedding.projs):
      return None
    return embedding.projs[min(i, len(embedding.projs) - 1)][...]

  def _output_weight(self, i, embedding: AdaptiveEmbedding):
    """Cluster i's output weights `[size_i, d_i]`: its table, or its rows of the single table."""
    tables = embedding.tables if self.tables is None else self.tables
    if len(tables) == 1:
      return tables[0][...][self.bounds[i] : self.bounds[i + 1]]
    return tables[i][...]

  def _cluster_logprobs(self, hidden, embedding):
    """[head log-probs [N, c0 + n_clusters - 1], tail log-probs per cluster [N, size_i]]."""
    out = []
    for i in range(len(self.bounds) - 1):
      proj = self._projection(i, embedding)
      h = hidden if proj is None else hidden @ proj.astype(hidden.dtype)
      weight, bias = self._output_weight(i, embedding), self.biases[i][...]
      if i == 0 and self.cluster_weight is not None:
        weight = jnp.concatenate([weight, self.cluster_weight[...]], axis=0)
        bias = jnp.concatenate([bias, self.cluster_bias[...]], axis=0)
      acc = jnp.promote_types(h.dtype, jnp.float32)  # at least float32
      logits = (h @ weight.T.astype(h.dtype)).astype(acc) + bias[None, :].astype(acc)
      out.append(jax.nn.log_softmax(logits, axis=-1))
    return out

  def log_probs(self, hidden: jax.Array, embedding: AdaptiveEmbedding) -> jax.Array:
    """Full distribution: hidden `[N, d_proj]` -> `[N, n_token]` log-probabilities (at least float32)."""
    head, *tails = self._cluster_logprobs(hidden, embedding)
    c0 = self.bounds[1]
    parts = [head[:, :c0]] + [head[:, c0 + i, None] + tail for i, tail in enumerate(tails)]
    return jnp.concatenate(parts, axis=-1)

  def nll(self, hidden: jax.Array, targets: jax.Array, embedding: AdaptiveEmbedding, chunk: int = 1024):
    """-log p(target): hidden `[N, d_proj]`, targets `[N]` -> `[N]` (at least float32).

    Tokens are processed `chunk` at a time, so the tail logits never exceed
    `[chunk, cluster size]` in memory.
    """

    def one(args):
      h, t = args
      head, *tails = self._cluster_logprobs(h[None], embedding)
      c0 = self.bounds[1]
      logp = head[0, jnp.clip(t, 0, c0 - 1)]
      for i, tail in enumerate(tails):
        lo, hi = self.bounds[i + 1], self.bounds[i + 2]
        inside = (t >= lo) & (t < hi)
        logp = jnp.where(inside, head[0, c0 + i] + tail[0, jnp.clip(t - lo, 0, hi - lo - 1)], logp)
      return -logp

    return jax.lax.map(one, (hidden, targets), batch_size=chunk)

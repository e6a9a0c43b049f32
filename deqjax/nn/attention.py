"""Transformer-XL relative multi-head attention, as pure functions.

Shapes: b batch, q query length, m memory length, k = m + q key length,
h heads, d per-head dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_frequencies(d_model: int, dtype=jnp.float32) -> jax.Array:
  """`[d_model // 2]` frequencies 1 / 10000^(2j / d_model) of the sinusoidal embeddings."""
  return 1.0 / (10000 ** (jnp.arange(0, d_model, 2, dtype=dtype) / d_model))


def sinusoid_positions(klen: int, d_model: int, dtype=jnp.float32) -> jax.Array:
  """Relative position embeddings for distances klen-1, ..., 0: `[klen, d_model]` ([sin, cos], not interleaved).

  Computed in at least float32 (float64 for a float64 `dtype`), then cast to `dtype`.
  """
  acc = jnp.promote_types(dtype, jnp.float32)
  positions = jnp.arange(klen - 1, -1, -1, dtype=acc)
  angles = positions[:, None] * inverse_frequencies(d_model, acc)[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def rel_shift(x: jax.Array) -> jax.Array:
  """Aligns position scores `[..., q, k]` from distance order to key order.

  Column j of the input scores distance klen-1-j; after the shift, entry
  (i, j) scores query i (absolute position m + i) against key j, i.e. the
  input's column j + q - 1 - i. Entries with j > m + i (future keys) hold
  other scores and must be masked.
  """
  *lead, q, k = x.shape
  padded = jnp.concatenate([jnp.zeros((*lead, q, 1), x.dtype), x], axis=-1)
  return padded.reshape(*lead, k + 1, q)[..., 1:, :].reshape(*lead, q, k)


def causal_mask(qlen: int, mlen: int, window: int | None = None) -> jax.Array:
  """`[q, k]` True where query i may attend key j.

  Key j is visible when j <= m + i (all memory, past and self) and, with a `window`, when its
  distance m + i - j is below `window` (the reference's local attention).
  """
  distance = (jnp.arange(qlen)[:, None] + mlen) - jnp.arange(mlen + qlen)[None, :]
  visible = distance >= 0
  return visible if window is None else visible & (distance < window)


def _one_head(q, k, v, r_k, r_w_bias, r_r_bias, mlen: int, window: int | None):
  """One head: q `[b, q, d]`, k, v `[b, k, d]`, r_k `[k, d]`, biases `[d]` -> `[b, q, d]`."""
  scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))  # folded into the queries: [b, q, d], not [b, q, k]
  content = jnp.einsum("bqd,bkd->bqk", (q + r_w_bias[None, None].astype(q.dtype)) * scale, k)
  position = rel_shift(jnp.einsum("bqd,kd->bqk", (q + r_r_bias[None, None].astype(q.dtype)) * scale, r_k))
  acc = jnp.promote_types(q.dtype, jnp.float32)  # float32 for 16-bit inputs, float64 stays
  scores = jnp.where(causal_mask(q.shape[1], mlen, window)[None], (content + position).astype(acc), -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bqk,bkd->bqd", probs, v)


def _causal_chunks(q, k, v, r_k, r_w_bias, r_r_bias, mlen: int, window: int | None, chunks: int):
  """`_one_head` over `chunks` consecutive blocks of queries, each against only the keys it may see.

  Queries [a, e) of the segment (absolute positions m + a .. m + e - 1) see keys [0, m + e): a
  segment of e - a queries with memory m + a, whose position embeddings are the last m + e rows
  of r_k (distances m + e - 1 .. 0). The scores of the keys no query of a block sees are never
  formed: with m = 0 and n blocks, (n + 1) / 2n of the `[q, k]` score entries.
  """
  qlen, klen = q.shape[1], k.shape[1]
  bounds = [round(qlen * c / chunks) for c in range(chunks + 1)]
  outs = []
  for a, e in zip(bounds[:-1], bounds[1:], strict=True):
    if e > a:
      seen = mlen + e
      block = (q[:, a:e], k[:, :seen], v[:, :seen], r_k[klen - seen :], r_w_bias, r_r_bias)
      outs.append(_one_head(*block, mlen + a, window))
  return jnp.concatenate(outs, axis=1)


def relative_attention(
  q, k, v, r_k, r_w_bias, r_r_bias, mlen: int, window: int | None = None, remat: bool = True, query_chunks: int = 1
) -> jax.Array:
  """Transformer-XL attention with learnable content/position biases.

  Heads are computed one at a time (`lax.map`): no `[b, h, q, k]` tensor is
  ever materialised, only `[b, q, k]` for the head at hand. With `remat` (the
  default) each head is also rematerialised under differentiation: a
  linearisation stores only its inputs, and every VJP re-runs the head's
  forward. The DEQ's backward solve evaluates this layer's VJP dozens of
  times, so its transients set the step's peak. Without `remat` a
  linearisation stores each head's `[b, q, k]` probabilities (h of them) and
  each VJP skips that forward, which is the larger part of the step's time
  where the sequence is long and the width small (e.g. the copy-memory task).

  Args:
    q: `[b, q, h, d]` queries of the current segment.
    k, v: `[b, k, h, d]` keys and values over [memory; segment].
    r_k: `[k, h, d]` projected relative position embeddings (distances k-1..0).
    r_w_bias, r_r_bias: `[h, d]` content and position biases.
    mlen: memory length m (static).
    window: keys at distance >= window are masked (static; None: no limit).
    remat: rematerialise each head under differentiation (static).
    query_chunks: compute each head in this many consecutive blocks of queries, each block scoring
      only the keys up to its last query (static; 1: one block). Causal attention over a long
      segment then forms about (n + 1) / 2n of the score entries (m = 0); the result is the same
      up to the order of the softmax's sums.

  Returns:
    `[b, q, h, d]` attention output (softmax in at least float32).
  """
  if isinstance(query_chunks, bool) or not isinstance(query_chunks, int) or not 1 <= query_chunks:
    raise ValueError(f"query_chunks must be an int >= 1; got query_chunks={query_chunks!r} (q {q.shape}).")
  if query_chunks == 1:
    head = lambda args: _one_head(*args, mlen, window)
  else:
    head = lambda args: _causal_chunks(*args, mlen, window, min(query_chunks, q.shape[1]))
  head = jax.checkpoint(head) if remat else head
  heads_first = lambda a, axis: jnp.moveaxis(a, axis, 0)
  per_head = (heads_first(q, 2), heads_first(k, 2), heads_first(v, 2), heads_first(r_k, 1), r_w_bias, r_r_bias)
  out = jax.lax.map(head, per_head)  # [h, b, q, d]
  return jnp.moveaxis(out, 0, 2)


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """LayerNorm over the last axis without learnable scale or bias (statistics in at least float32)."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)

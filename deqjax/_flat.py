"""Pytree states as one `[batch, n]` working matrix, and back.

The solvers work on a single 2-D array: one row per independent system (one
per sample along `batch_axis`, or a single row for the whole state when
`batch_axis` is None) and all the unknowns of that system along the row.
Low-precision leaves (bfloat16, float16) are promoted to float32 for the
solver algebra; float32 and float64 keep their precision.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FlatSpec:
  """How a pytree state maps to a `[batch, n]` matrix.

  Attributes:
    treedef: the state's tree structure.
    shapes: each leaf's shape.
    dtypes: each leaf's dtype.
    batch_axis: the per-sample axis of every leaf, or None (one system).
    batch_size: the number of rows (1 when `batch_axis` is None).
    work_dtype: the dtype of the working matrix.
  """

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  batch_axis: int | None
  batch_size: int
  work_dtype: Any

  @property
  def row_sizes(self) -> tuple[int, ...]:
    """Unknowns per row contributed by each leaf."""
    return tuple(math.prod(s) // self.batch_size for s in self.shapes)

  @property
  def n(self) -> int:
    """Unknowns per row."""
    return sum(self.row_sizes)

  def flatten(self, tree) -> jax.Array:
    """Pytree shaped like the state -> `[batch, n]` in `work_dtype`."""
    leaves = jax.tree.leaves(tree)
    rows = []
    for leaf in leaves:
      leaf = jnp.asarray(leaf)
      if self.batch_axis is not None:
        leaf = jnp.moveaxis(leaf, self.batch_axis, 0)
      rows.append(leaf.reshape(self.batch_size, -1).astype(self.work_dtype))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)

  def unflatten(self, matrix: jax.Array):
    """`[batch, n]` -> pytree shaped like the state (leaf dtypes restored)."""
    offsets = np.cumsum((0,) + self.row_sizes)
    leaves = []
    for shape, dtype, start, stop in zip(self.shapes, self.dtypes, offsets[:-1], offsets[1:], strict=True):
      block = matrix if len(self.shapes) == 1 else matrix[:, int(start) : int(stop)]
      if self.batch_axis is None:
        leaf = block.reshape(shape)
      else:
        moved = (shape[self.batch_axis],) + shape[: self.batch_axis] + shape[self.batch_axis + 1 :]
        leaf = jnp.moveaxis(block.reshape(moved), 0, self.batch_axis)
      leaves.append(leaf.astype(dtype))
    return jax.tree.unflatten(self.treedef, leaves)


def work_dtype_for(dtypes) -> Any:
  """float32 for 16-bit and 32-bit states, float64 when any leaf is float64."""
  result = jnp.dtype(jnp.float32)
  for dtype in dtypes:
    result = jnp.promote_types(result, dtype)
  return result


def make_spec(tree, batch_axis: int | None, name: str) -> FlatSpec:
  """Builds the FlatSpec of `tree`, checking that it can be a solver state.

  Args:
    tree: a pytree of floating arrays (or ShapeDtypeStructs).
    batch_axis: the per-sample axis, or None.
    name: the argument's name, for error messages.

  Raises:
    TypeError: a leaf is not floating point, or the tree is empty.
    ValueError: a leaf lacks `batch_axis`, or leaves disagree on its size.
  """
  leaves, treedef = jax.tree.flatten(tree)
  if not leaves:
    raise TypeError(f"{name} must contain at least one array; got the empty pytree {tree!r}.")
  shapes = tuple(tuple(np.shape(leaf)) for leaf in leaves)
  dtypes = tuple(jnp.result_type(leaf) for leaf in leaves)
  for path_and_leaf, shape, dtype in zip(jax.tree_util.tree_flatten_with_path(tree)[0], shapes, dtypes, strict=True):
    where = f"{name}{jax.tree_util.keystr(path_and_leaf[0])}"
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"{where} must be a floating-point array (float16, bfloat16, float32, float64);"
        f" got dtype {dtype} with shape {shape}."
      )
    if batch_axis is not None and len(shape) <= batch_axis:
      raise ValueError(
        f"batch_axis={batch_axis} is out of range for {where} with shape {shape}: every leaf"
        " of the state needs that axis."
      )
  if batch_axis is None:
    batch_size = 1
  else:
    sizes = {shape[batch_axis] for shape in shapes}
    if len(sizes) != 1:
      raise ValueError(
        f"batch_axis={batch_axis}: the leaves of {name} disagree on the batch size; shapes {list(shapes)}."
      )
    batch_size = sizes.pop()
    if batch_size == 0:
      raise ValueError(f"batch_axis={batch_axis}: {name} has an empty batch; shapes {list(shapes)}.")
  return FlatSpec(treedef, shapes, dtypes, batch_axis, batch_size, work_dtype_for(dtypes))

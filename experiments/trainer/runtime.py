"""The run's fixed parts: the checked config, the task, the model split into graph and state, the mesh."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.tasks import Task, task_class
from experiments.trainer.config_check import ConfigError, check_config
from experiments.trainer.models import build_model
from experiments.trainer.schedules import make_optimizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(name: str, batch: int, mesh) -> None:
  devices = mesh.devices.size
  if batch % devices or batch % jax.process_count():
    raise ConfigError(
      f"config.{name}={batch} is not divisible by the {devices} devices ({jax.process_count()} processes);"
      " the global batch is split evenly across them."
    )


def to_global(array: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
  """This process's rows -> the global array sharded over the batch axis."""
  return jax.make_array_from_process_local_data(sharding, array, (global_rows, *array.shape[1:]))


@dataclasses.dataclass
class Runtime:
  """Everything that stays fixed during a run."""

  config: ml_collections.ConfigDict
  task: Task | None  # None: training steps on synthetic tokens (experiments.benchmarks.synthetic)
  graphdef: nnx.GraphDef
  rest: nnx.State
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  cache: dict = dataclasses.field(default_factory=dict, repr=False)  # jitted steps, the eval runtime

  def jitted(self, name, fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)`, made once per run under `name` (jit caches per function object)."""
    if name not in self.cache:
      self.cache[name] = jax.jit(fn, **jit_kwargs)
    return self.cache[name]

  @property
  def dtype(self):
    return DTYPES[self.config.dtype]

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())


def setup(config: ml_collections.ConfigDict) -> tuple[Runtime, nnx.State]:
  """(runtime, initial parameters) for `config`; the config is checked first."""
  check_config(config)
  mesh = make_mesh()
  check_batch("batch_size", config.batch_size, mesh)
  check_batch("eval_batch_size", config.eval_batch_size, mesh)
  task, config = task_class(config).create(config)
  return build_runtime(config, task, mesh)


def build_runtime(config: ml_collections.ConfigDict, task: Task | None, mesh) -> tuple[Runtime, nnx.State]:
  """(runtime, initial parameters, replicated) of a resolved config; `task` None for steps on synthetic tokens."""
  model = build_model(config, nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  runtime = Runtime(config, task, graphdef, rest, make_optimizer(config), mesh)
  return runtime, jax.device_put(params, runtime.replicated)

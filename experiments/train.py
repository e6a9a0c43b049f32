"""Training and evaluation, data-parallel over all devices, for every task a config names.

`train_and_evaluate(config, workdir)` trains (resuming from the workdir's latest
checkpoint), validates periodically and returns the task's test result;
`evaluate(config, workdir)` scores the latest checkpoint. Everything a step
depends on is a function of (seed, step) or lives in the checkpoint, so a run
killed at any moment and restarted ends with the same parameters.

A task (`config.task`) supplies the data and the evaluation: "wikitext"
(`LMTask` here: ordered segments, memory carried, perplexity) or "copy_memory"
(`experiments.copy_memory_task`). The models share one call signature
(tokens, targets, memory) -> output with a per-token `nll`, so the step,
the checkpoints and the loop are common.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import signal
import time
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import deqjax
from deqjax.data import OrderedLMStream, WikitextData, load_wikitext
from experiments.clipping import clip_relative_to_running_norm
from experiments.model_builder import architecture, build_model
from experiments.train_metrics import MetricsWriter, StepMetrics

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


# ----------------------------------------------------------------------------- tasks


class Task(Protocol):
  """What a training task provides the common loop with."""

  result_name: str  # the test result's name ("test_ppl"); main prints `<result_name>=<value>`
  tokens_per_step: int  # tokens of one global training batch

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> tuple[Task, ml_collections.ConfigDict]:
    """(task, `config` with its data-derived fields resolved); reads or makes the data."""

  def identity(self) -> dict:
    """JSON-able description of the data; a checkpoint made on other data does not resume."""

  def check_identity(self, saved: dict, step: int) -> None:
    """Raises ValueError when the checkpoint at `step` (identity `saved`) was made on other data."""

  def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of training step `step`: this process's rows."""

  def epoch(self, step: int) -> int:
    """The data epoch training step `step` reads."""

  def validate(self, rt: Runtime, params, mode: str) -> dict:
    """Periodic evaluation: named scalars."""

  def test(self, rt: Runtime, params, mode: str) -> float:
    """The final result (`result_name`)."""


def task_class(config: ml_collections.ConfigDict):
  """The class of `config.task`; its `create(config)` returns (task, config with data-derived fields resolved)."""
  if config.task == "wikitext":
    return LMTask
  if config.task == "copy_memory":
    from experiments.copy_memory_task import CopyMemoryTask  # that module builds on this one

    return CopyMemoryTask
  raise ValueError(f"Unknown task={config.task!r}; expected 'wikitext' or 'copy_memory'.")


# ----------------------------------------------------------------------------- setup


def load_data(config: ml_collections.ConfigDict) -> WikitextData:
  d = config.data
  if not d.manual_dir:
    raise ValueError("config.data.manual_dir is empty; point it at the folder with the wiki.*.tokens files.")
  return load_wikitext(d.name, d.manual_dir, d.data_dir or None)


def resolve_vocab(config: ml_collections.ConfigDict, data: WikitextData) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.n_token is the data's vocabulary size (0 means: take it from the data)."""
  config = config.copy_and_resolve_references()
  n_token = config.model.n_token
  if n_token == 0:
    config.model.n_token = len(data.vocab)
  elif n_token != len(data.vocab):
    raise ValueError(
      f"config.model.n_token={n_token} but the {data.name!r} vocabulary has {len(data.vocab)} types;"
      " set n_token to match (or to 0 to take it from the data)."
    )
  return config


def vocab_digest(vocab) -> str:
  return hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:16]


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(name: str, batch: int, mesh) -> None:
  devices = mesh.devices.size
  if batch % devices or batch % jax.process_count():
    raise ValueError(
      f"{name}={batch} is not divisible by the {devices} devices ({jax.process_count()} processes);"
      " the global batch is split evenly across them."
    )


def local_rows(batch: int) -> tuple[int, int]:
  """The rows of the global batch that this process loads."""
  per_process = batch // jax.process_count()
  start = jax.process_index() * per_process
  return start, start + per_process


def to_global(array: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
  """This process's rows -> the global array sharded over the batch axis."""
  return jax.make_array_from_process_local_data(sharding, array, (global_rows, *array.shape[1:]))


@dataclasses.dataclass
class Runtime:
  """Everything that stays fixed during a run."""

  config: ml_collections.ConfigDict
  task: Task | None  # None: training steps on synthetic tokens (experiments.bench_synthetic)
  graphdef: nnx.GraphDef
  rest: nnx.State
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  cache: dict = dataclasses.field(default_factory=dict, repr=False)  # jitted steps, the eval runtime

  @property
  def is_deq(self) -> bool:
    return self.config.mode != "layers"

  def jitted(self, name, fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)`, made once per run under `name` (jit caches per function object)."""
    if name not in self.cache:
      self.cache[name] = jax.jit(fn, **jit_kwargs)
    return self.cache[name]

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay to 0 at num_train_steps, after global-norm clipping
  (fixed, then relative to the running norm when grad_clip_ratio > 0)."""
  warmup = min(config.warmup_steps, config.num_train_steps)
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else config.learning_rate,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(config.num_train_steps, warmup + 1),
    end_value=0.0,
  )
  clips = [optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()]
  if config.grad_clip_ratio > 0:  # only then: checkpoints of runs without it keep their state's structure
    clips.append(clip_relative_to_running_norm(config.grad_clip_ratio, config.grad_clip_ratio_decay))
  return optax.chain(*clips, optax.adamw(schedule, weight_decay=config.weight_decay))


def setup(config: ml_collections.ConfigDict) -> tuple[Runtime, nnx.State]:
  """(runtime, initial parameters) for `config`; the config is checked first."""
  check_config(config)
  mesh = make_mesh()
  check_batch("batch_size", config.batch_size, mesh)
  check_batch("eval_batch_size", config.eval_batch_size, mesh)
  task, config = task_class(config).create(config)
  return build_runtime(config, task, mesh)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Errors on fields that would fail later (dtype, model fields and mode, budget), before any data is read."""
  if config.dtype not in DTYPES:
    raise ValueError(f"Unknown dtype={config.dtype!r}; expected one of {sorted(DTYPES)}.")
  architecture(config)  # unknown model fields / modes fail here, before the data is read
  weights = ("jac_reg", "jac_reg_after", "jac_reg_until_step", "pretrain_jac_reg")
  if not all(config[name] >= 0 for name in weights):
    raise ValueError(
      "jac_reg, jac_reg_after, jac_reg_until_step and pretrain_jac_reg must be >= 0; got "
      + ", ".join(f"{name}={config[name]}" for name in weights)
      + "."
    )
  if not (config.grad_clip_ratio == 0 or config.grad_clip_ratio > 1) or not 0 <= config.grad_clip_ratio_decay < 1:
    raise ValueError(
      "grad_clip_ratio must be 0 (off) or > 1 and grad_clip_ratio_decay in [0, 1); got "
      f"grad_clip_ratio={config.grad_clip_ratio}, grad_clip_ratio_decay={config.grad_clip_ratio_decay}."
    )
  settle = ("pretrain_settle_iters", "pretrain_settle_from_step", "pretrain_settle_until_step")
  if not all(isinstance(config[name], int) and config[name] >= 0 for name in settle):
    raise ValueError(
      "pretrain_settle_* must be ints >= 0; got " + ", ".join(f"{n}={config[n]!r}" for n in settle) + "."
    )
  deqjax.check_backward_options(config.backward, config.phantom_steps, config.phantom_damping)
  if not config.train_budget_seconds >= 0:
    raise ValueError(f"train_budget_seconds must be >= 0 (0: no budget); got {config.train_budget_seconds}.")


def build_runtime(config: ml_collections.ConfigDict, task: Task | None, mesh) -> tuple[Runtime, nnx.State]:
  """(runtime, initial parameters, replicated) of a resolved config; `task` None for steps on synthetic tokens."""
  model = build_model(config, nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  runtime = Runtime(config, task, graphdef, rest, make_optimizer(config), mesh)
  return runtime, jax.device_put(params, runtime.replicated)


# ----------------------------------------------------------------------------- steps


def model_forward(rt: Runtime, params, tokens, targets, memory, *, key, mode, probe=None, jac_key=None, **solver):
  """The model's output for one segment (DEQ models: `mode` "deq" or "pretrain"; `solver`: `fixed_point` options)."""
  model = nnx.merge(rt.graphdef, params, rt.rest)
  dtype = DTYPES[rt.config.dtype]
  if not rt.is_deq:
    return model(tokens, targets, memory, dropout_key=key, dtype=dtype)
  extra = solver if probe is None else {"backward_probe": probe, **solver}
  return model(tokens, targets, memory, dropout_key=key, mode=mode, dtype=dtype, jac_key=jac_key, **extra)


def main_mode(config) -> str:
  """The mode a run is judged by: DEQ runs' solver phase (after pretraining), the others' only mode."""
  return model_mode(config, config.pretrain_steps)


def model_mode(config, step: int) -> str:
  """The model mode of training step `step`: "deq", "pretrain" (unrolled weight-tied cell) or "layers"."""
  if config.mode == "layers":
    return "layers"
  if config.mode == "unrolled" or step < config.pretrain_steps:
    return "pretrain"
  return "deq"


def uses_jac_reg(config, mode: str, step: int) -> bool:
  """Whether training step `step` (a Python int) of model mode `mode` computes the Jacobian penalty.

  True where its weight (`jac_reg_weight`) is positive. The training loop compiles one update per
  value, so a run whose penalty switches off (jac_reg_after 0) stops paying for it at the switch.
  """
  if mode == "pretrain":
    return config.pretrain_jac_reg > 0
  if mode != "deq":
    return False
  switched = 0 < config.jac_reg_until_step <= step
  return (config.jac_reg_after if switched else config.jac_reg) > 0


def jac_reg_weight(config, step, mode: str = "deq") -> jax.Array:
  """gamma at training step `step` (traced or not) of model mode `mode`.

  DEQ steps: jac_reg, then jac_reg_after from jac_reg_until_step on; unrolled steps: pretrain_jac_reg.
  """
  if mode == "pretrain":
    return jnp.asarray(config.pretrain_jac_reg, jnp.float32)
  if config.jac_reg_until_step <= 0:
    return jnp.asarray(config.jac_reg, jnp.float32)
  return jnp.where(step < config.jac_reg_until_step, config.jac_reg, config.jac_reg_after).astype(jnp.float32)


def training_overrides(config, step, mode: str) -> dict:
  """Model-call options of a training step of mode `mode` at step `step` (traced or not).

  Unrolled steps: `settle_iters`, K(step) = floor(pretrain_settle_iters * ramp), the ramp
  rising linearly from 0 at pretrain_settle_from_step to 1 at pretrain_settle_until_step
  (a step from 0 to 1 at pretrain_settle_from_step when until <= from).
  DEQ steps: the backward (implicit or phantom) options.
  """
  if mode == "pretrain" and config.pretrain_settle_iters > 0:
    start, end = config.pretrain_settle_from_step, config.pretrain_settle_until_step
    ramp = jnp.clip((step - start) / (end - start), 0.0, 1.0) if end > start else jnp.where(step >= start, 1.0, 0.0)
    return {"settle_iters": jnp.floor(config.pretrain_settle_iters * ramp).astype(jnp.int32)}
  if mode == "deq" and config.backward == "phantom":
    return {"backward": "phantom", "phantom_steps": config.phantom_steps, "phantom_damping": config.phantom_damping}
  return {}


def dropout_base_key(config) -> jax.Array:
  """The key every step's dropout and probe keys are folded from (parameters use `seed` itself)."""
  return jax.random.key(config.seed + 1)


def train_step(rt: Runtime, mode: str, params, opt_state, memory, tokens, targets, step, *, use_jac: bool):
  """One update; a non-finite loss or gradient leaves parameters, optimizer state and memory unchanged.

  use_jac: whether the update computes the Jacobian penalty (`uses_jac_reg` at this step); its
  weight follows the traced `step`, so one compiled update serves a change from one positive
  weight to another.
  """
  key = jax.random.fold_in(dropout_base_key(rt.config), step)
  dropout_key, jac_key = jax.random.split(key)
  batch = tokens.shape[0]
  probe = deqjax.backward_probe(batch) if mode == "deq" else None

  overrides = training_overrides(rt.config, step, mode)

  def loss_fn(params, probe):
    out = model_forward(
      rt, params, tokens, targets, memory, key=dropout_key, mode=mode, probe=probe,
      jac_key=jac_key if use_jac else None, **overrides,
    )  # fmt: skip
    nll = jnp.mean(out.nll)
    loss = nll + jac_reg_weight(rt.config, step, mode) * jnp.mean(out.jac_loss) if use_jac else nll
    return loss, (nll, out)

  (loss, (nll, out)), (grads, probe_bar) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, probe)
  grad_norm = optax.tree_utils.tree_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = rt.optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = {"loss": nll, "grad_norm": grad_norm, "finite": finite}
  if use_jac:
    metrics["jac_loss"] = jnp.mean(out.jac_loss)
  if mode == "deq":
    metrics.update(
      f_steps=jnp.mean(out.info.nstep.astype(jnp.float32)),
      f_residual=jnp.mean(out.info.rel_residual.astype(jnp.float32)),
      b_steps=jnp.mean(probe_bar.nstep),
      b_residual=jnp.mean(probe_bar.rel_residual),
    )
  new_memory = keep(out.memory, memory) if _same_shapes(out.memory, memory) else out.memory
  return keep(new_params, params), keep(new_opt_state, opt_state), new_memory, metrics


def _same_shapes(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def eval_step(rt: Runtime, mode: str, params, memory, tokens, targets, **solver):
  """(summed NLL, new memory) of one evaluation segment (no dropout; `solver`: `fixed_point` overrides)."""
  out = model_forward(rt, params, tokens, targets, memory, key=None, mode=mode, **solver)
  return jnp.sum(out.nll.astype(jnp.float32)), out.memory


# ----------------------------------------------------------------------------- language modelling


class LMTask:
  """WikiText language modelling: ordered segments of the training text, memory-cached perplexity."""

  result_name = "test_ppl"

  def __init__(self, config: ml_collections.ConfigDict, data: WikitextData):
    self.config, self.data = config, data
    self.stream = OrderedLMStream(
      data.splits["train"], config.batch_size, config.tgt_len, rows=local_rows(config.batch_size)
    )
    self.tokens_per_step = config.batch_size * config.tgt_len

  @classmethod
  def create(cls, config: ml_collections.ConfigDict) -> tuple[LMTask, ml_collections.ConfigDict]:
    data = load_data(config)
    config = resolve_vocab(config, data)
    return cls(config, data), config

  def identity(self) -> dict:
    return {
      "dataset": self.data.name,
      "vocab_size": len(self.data.vocab),
      "vocab_digest": vocab_digest(self.data.vocab),
    }

  def check_identity(self, saved: dict, step: int) -> None:
    now = self.identity()
    if saved != now:
      raise ValueError(
        f"The checkpoint at step {step} was trained on a vocabulary of {saved['vocab_size']} types ({saved['dataset']},"
        f" digest {saved['vocab_digest']}); the data now gives {now['vocab_size']} ({now['dataset']},"
        f" digest {now['vocab_digest']}). Use the same dataset, or a fresh workdir."
      )

  def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    return self.stream.segment(step)

  def epoch(self, step: int) -> int:
    return self.stream.epoch(step)

  def validate(self, rt: Runtime, params, mode: str) -> dict:
    return {"valid_ppl": evaluate_split(rt, params, "validation", self.config.eval_max_segments, mode)}

  def test(self, rt: Runtime, params, mode: str) -> float:
    return evaluate_split(rt, params, "test", 0, mode)


def eval_runtime(rt: Runtime) -> Runtime:
  """The runtime evaluation uses: the same weights, the model rebuilt with eval_mem_len when that differs."""
  c = rt.config
  if c.eval_mem_len < 0 or c.eval_mem_len == c.model.mem_len:
    return rt
  if "eval_runtime" not in rt.cache:
    config = c.copy_and_resolve_references()
    config.model.mem_len = c.eval_mem_len
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param, ...)
    rt.cache["eval_runtime"] = dataclasses.replace(rt, config=config, graphdef=graphdef, cache={})
  return rt.cache["eval_runtime"]


def evaluate_split(rt: Runtime, params, split: str, max_segments: int, mode: str, **solver) -> float:
  """Memory-cached perplexity: eval_batch_size ordered streams, segments of eval_tgt_len, memory carried.

  `mode` is the model mode trained last ("deq", "pretrain" or "layers"); max_segments 0 reads all.
  `solver`: `fixed_point` options overriding the config's for DEQ models (e.g. max_iter=8).
  """
  c = rt.config
  eval_rt = eval_runtime(rt)
  stream = OrderedLMStream(
    rt.task.data.splits[split], c.eval_batch_size, c.eval_tgt_len, rows=local_rows(c.eval_batch_size)
  )
  step = rt.jitted(("eval", mode, *sorted(solver.items())), functools.partial(eval_step, eval_rt, mode, **solver))
  memory = init_memory(eval_rt, params, c.eval_batch_size)
  total, count = 0.0, 0
  for k, (inputs, targets) in enumerate(stream.eval_segments()):
    if max_segments and k >= max_segments:
      break
    x, y = (to_global(a, rt.batch_sharding, c.eval_batch_size) for a in (inputs, targets))
    nll, memory = step(params, memory, x, y)
    total += float(nll)
    count += inputs.shape[1] * c.eval_batch_size
  return math.exp(total / count)


def init_memory(rt: Runtime, params, batch: int):
  """The model's empty memory for `batch` rows (length 0, or the TrellisNet's zero history), batch-sharded."""
  memory = nnx.merge(rt.graphdef, params, rt.rest).init_memory(batch, DTYPES[rt.config.dtype])
  return jax.device_put(memory, rt.batch_sharding)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


@dataclasses.dataclass
class Progress:
  """The loop's counters, saved with every checkpoint."""

  step: int = 0
  nonfinite_total: int = 0
  train_seconds: float = 0.0  # wall-clock time of the training steps, summed over resumed runs


def save_checkpoint(manager, rt: Runtime, progress: Progress, params, opt_state, memory) -> None:
  """Parameters, optimizer state, memory, and as JSON: step, data position, RNG, the task's data identity."""
  leaves = jax.tree.leaves(memory)
  meta = {
    **dataclasses.asdict(progress),
    "data_segment": progress.step,  # the next training batch; the data is a function of it
    "rng_key_data": np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist(),
    "task": rt.task.identity(),
    "memory": [[list(leaf.shape), str(leaf.dtype)] for leaf in leaves],
  }
  # Empty leaves (a memory of length 0) cannot be stored by orbax; their shapes in `meta` rebuild them.
  state = {"params": params, "opt_state": opt_state, "memory": [leaf for leaf in leaves if leaf.size]}
  manager.save(progress.step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def restore_checkpoint(manager, rt: Runtime, params, opt_state, memory, step: int | None = None):
  """(progress, params, opt_state, memory) of the latest (or given) checkpoint."""
  step = manager.latest_step() if step is None else step
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  rt.task.check_identity(meta["task"], step)
  key_data = np.asarray(jax.random.key_data(dropout_base_key(rt.config))).tolist()
  if meta["rng_key_data"] != key_data:
    raise ValueError(
      f"The checkpoint at step {step} was trained with another seed (its dropout key data {meta['rng_key_data']},"
      f" now {key_data} from seed={rt.config.seed}); resuming would not continue the same run. Use its seed."
    )
  as_target = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
  shapes = [(tuple(shape), jnp.dtype(dtype)) for shape, dtype in meta["memory"]]
  memory_target = [jax.ShapeDtypeStruct(*sd, sharding=rt.batch_sharding) for sd in shapes if math.prod(sd[0])]
  target = {"params": as_target(params), "opt_state": as_target(opt_state), "memory": memory_target}
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  stored = iter(state["memory"])
  leaves = [
    next(stored) if math.prod(shape) else jnp.zeros(shape, dtype, device=rt.batch_sharding) for shape, dtype in shapes
  ]
  memory = jax.tree.unflatten(jax.tree.structure(memory), leaves)
  progress = Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress)})
  return progress, state["params"], state["opt_state"], memory


# ----------------------------------------------------------------------------- loops


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def over_budget(config, progress: Progress) -> bool:
  """Whether the run has spent its wall-clock training budget (`train_budget_seconds`; 0: unlimited)."""
  return 0 < config.train_budget_seconds <= progress.train_seconds


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> float | None:
  """Trains (resuming from `workdir`), validates every eval_every_steps, returns the task's test result.

  Returns None when SIGTERM stopped the run (after saving a checkpoint).
  """
  rt, params = setup(config)
  c = rt.config
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = init_memory(rt, params, c.batch_size)
  manager = checkpoint_manager(workdir, c.keep_checkpoints)
  progress = Progress()
  if manager.latest_step() is not None:
    progress, params, opt_state, memory = restore_checkpoint(manager, rt, params, opt_state, memory)
    print(f"Resumed from {manager.directory} at step {progress.step}.", flush=True)
  writer = MetricsWriter(workdir, c.num_train_steps, rt.task.tokens_per_step, start_step=progress.step)
  consecutive = 0
  with _SigtermFlag() as sigterm:
    while progress.step < c.num_train_steps and not over_budget(c, progress):
      mode = model_mode(c, progress.step)
      inputs, targets = rt.task.train_batch(progress.step)
      started = time.perf_counter()
      x, y = (to_global(a, rt.batch_sharding, c.batch_size) for a in (inputs, targets))
      use_jac = uses_jac_reg(c, mode, progress.step)
      update = rt.jitted(
        ("train", mode, use_jac), functools.partial(train_step, rt, mode, use_jac=use_jac), donate_argnums=(0, 1)
      )
      params, opt_state, memory, metrics = update(params, opt_state, memory, x, y, progress.step)
      metrics = jax.device_get(metrics)
      progress.train_seconds += time.perf_counter() - started
      progress.step += 1
      step = progress.step
      consecutive = 0 if metrics["finite"] else consecutive + 1
      progress.nonfinite_total += int(not metrics["finite"])
      if consecutive >= c.max_nonfinite_steps:
        raise NonFiniteError(
          f"{consecutive} consecutive steps (up to step {step}) had a non-finite loss or gradient and were skipped;"
          f" stopping. The last checkpoint ({manager.latest_step()}) holds the last good parameters."
        )
      writer.add(StepMetrics(step, mode, metrics, rt.task.epoch(step - 1), progress.nonfinite_total))
      last = step == c.num_train_steps or over_budget(c, progress)
      if step % c.log_every_steps == 0 or last:
        writer.flush(step, train_seconds=progress.train_seconds)
      if c.eval_every_steps and step % c.eval_every_steps == 0 and not last:
        writer.scalars(step, {**rt.task.validate(rt, params, mode), "train_seconds": progress.train_seconds})
      if step % c.checkpoint_every_steps == 0 or last:
        save_checkpoint(manager, rt, progress, params, opt_state, memory)
      if sigterm.raised:
        if manager.latest_step() != step:
          save_checkpoint(manager, rt, progress, params, opt_state, memory)
        print(f"SIGTERM: saved the checkpoint at step {step} and stopped.", flush=True)
        writer.close()
        return None
  mode = model_mode(c, max(progress.step - 1, 0))
  result = rt.task.test(rt, params, mode)
  writer.scalars(progress.step, {rt.task.result_name: result, "train_seconds": progress.train_seconds})
  writer.close()
  return result


def restore_trained(config: ml_collections.ConfigDict, workdir: str) -> tuple[Runtime, nnx.State, str]:
  """(runtime, parameters of the workdir's latest checkpoint, the model mode they were trained in last)."""
  rt, params = setup(config)
  opt_state = jax.eval_shape(rt.optimizer.init, params)
  opt_state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rt.replicated), opt_state)
  manager = checkpoint_manager(workdir, rt.config.keep_checkpoints)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint under {manager.directory}; train first (--mode=train).")
  memory = init_memory(rt, params, rt.config.batch_size)
  progress, params, _, _ = restore_checkpoint(manager, rt, params, opt_state, memory)
  mode = model_mode(rt.config, max(progress.step - 1, 0))
  print(f"Checkpoint of step {progress.step}: model mode {mode!r} (that of its last training step).", flush=True)
  return rt, params, mode


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> float:
  """The task's test result for the workdir's latest checkpoint (LM: eval_tgt_len, eval_mem_len apply)."""
  rt, params, mode = restore_trained(config, workdir)
  return rt.task.test(rt, params, mode)

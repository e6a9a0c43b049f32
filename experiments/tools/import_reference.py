r"""Import a checkpoint of the 2019 reference code (locuslab/deq) as a deqjax checkpoint of a config.

    python -m experiments.tools.import_reference --checkpoint=deq_wt103.pkl \
      --config=experiments/configs/wikitext103/deq_transformer_medium_adaptive.py --workdir=/tmp/deq_wt103
    python -m experiments.main --mode=eval --config=<the same config> --workdir=/tmp/deq_wt103

The checkpoint is the reference's `state_dict` (its parameter names; see
`deqjax.models.from_reference`), as `.npz` (always readable) or as a PyTorch pickle `.pkl` / `.pt`
(read with torch when it is installed; torch is never a deqjax dependency). The reference
constructor's arguments come from the config; arguments stored with the checkpoint (an npz entry
`__hparams__` holding JSON, as `--export` writes, or a pickled `{"state_dict", "hparams"}`) or
given with `--hparams=FILE.json` are checked against the config: any that would change the
model's function and disagree is an error naming both values.

The checkpoint is written as the workdir's step `num_train_steps` (a finished run, evaluated in
"deq" phase), with a fresh optimizer state; a workdir that already holds checkpoints is refused.

`--export` goes the other way: it writes the workdir's latest checkpoint as an npz the reference
loads (`numpy.load` -> `torch.from_numpy` -> `model.load_state_dict`), with `__hparams__`.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from deqjax.models import from_reference, reference_hparams, to_reference
from deqjax.models.reference import kind_of
from deqjax.models.reference_files import HPARAMS_KEY, checked_hparams, read_checkpoint
from experiments import trainer
from experiments.trainer.workdir import exclusive

FLAGS = flags.FLAGS


def import_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, workdir: str, hparams_file: str = "") -> int:
  """Writes `checkpoint` as the workdir's checkpoint of `config` (holding the workdir's lock); returns its step."""
  with exclusive(workdir):
    return _import_checkpoint(config, checkpoint, workdir, hparams_file)


def _import_checkpoint(config, checkpoint: str, workdir: str, hparams_file: str) -> int:
  manager = trainer.checkpoint_manager(workdir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    raise ValueError(
      f"--workdir={workdir!r} already holds checkpoints (latest step {manager.latest_step()}); import into an"
      " empty workdir."
    )
  state_dict, stored = read_checkpoint(checkpoint)
  source = f"stored in {checkpoint}"
  if hparams_file:
    with open(hparams_file) as f:
      stored, source = {**(stored or {}), **json.load(f)}, f"in {hparams_file}"
  rt, params = trainer.setup(config)
  c = rt.config
  model_config = nnx.merge(rt.graphdef, params, rt.rest).config
  kind = kind_of(state_dict)
  expected_kind = {"deq_transformer": "transformer", "deq_trellisnet": "trellisnet"}.get(c.model_name)
  if kind != expected_kind:
    raise ValueError(f"{checkpoint} holds a reference DEQ-{kind} but the config's model_name is {c.model_name!r}.")
  hparams = checked_hparams(kind, reference_hparams(model_config), stored, source)
  try:
    model = from_reference(state_dict, hparams, param_dtype=jnp.float32)
  except ValueError as error:
    raise ValueError(f"{checkpoint} does not fit the config's model: {error}") from None
  imported = nnx.state(model, nnx.Param)
  params = jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), imported, params)
  opt_state = jax.jit(rt.optimizer.init)(params)
  memory = trainer.init_memory(rt, params, c.batch_size)
  progress = trainer.Progress(step=c.num_train_steps)
  trainer.save_checkpoint(manager, rt, progress, params, opt_state, memory)
  return progress.step


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, path: str) -> None:
  """Writes the workdir's latest checkpoint as the reference's state_dict (.npz) with `__hparams__`."""
  rt, params, _ = trainer.restore_trained(config, workdir)
  model = nnx.merge(rt.graphdef, jax.device_get(params), rt.rest)
  if not path.endswith(".npz"):
    raise ValueError(f"--export={path!r}: the export is an .npz file.")
  state_dict, hparams = to_reference(model)
  np.savez(path, **state_dict, **{HPARAMS_KEY: np.asarray(json.dumps(hparams))})


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "The workdir to write the checkpoint into (or to export from).")
  flags.DEFINE_string("checkpoint", "", "The reference checkpoint: .npz, or .pkl / .pt (needs torch).")
  flags.DEFINE_string("hparams", "", "Optional JSON file of the reference constructor's arguments, checked.")
  flags.DEFINE_string("export", "", "Instead of importing: write the workdir's latest checkpoint to this .npz.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if bool(FLAGS.checkpoint) == bool(FLAGS.export):
    raise app.UsageError("Give exactly one of --checkpoint (import) and --export.")
  try:
    if FLAGS.export:
      export_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.export)
      print(f"Wrote {FLAGS.export}.", flush=True)
      return
    step = import_checkpoint(FLAGS.config, FLAGS.checkpoint, FLAGS.workdir, FLAGS.hparams)
  except (FileNotFoundError, ValueError, trainer.WorkdirBusy) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"Wrote the checkpoint of step {step} to {os.path.join(FLAGS.workdir, 'checkpoints')}.", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

r"""Import a checkpoint of the 2019 reference code (locuslab/deq) as a deqjax checkpoint of a config.

    python -m experiments.import_reference --checkpoint=deq_wt103.pkl \
      --config=experiments/configs/deq_transformer_medium_adaptive.py --workdir=/tmp/deq_wt103
    python -m experiments.main --mode=eval --config=<the same config> --workdir=/tmp/deq_wt103

The checkpoint is the reference's `state_dict` (its parameter names; see
`deqjax.models.from_reference`), as `.npz` (always readable) or as a PyTorch pickle `.pkl` / `.pt`
(read with torch when it is installed; torch is never a deqjax dependency). The reference
constructor's arguments come from the config; arguments stored with the checkpoint (an npz entry
`__hparams__` holding JSON, as `--export` writes, or a pickled `{"state_dict", "hparams"}`) or
given with `--hparams=FILE.json` are checked against the config: any that would change the
model's function and disagree is an error naming both values.

The checkpoint is written as the workdir's step `num_train_steps` (a finished run, evaluated in
DEQ mode), with a fresh optimizer state; a workdir that already holds checkpoints is refused.

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
from deqjax.models.reference import ARCHITECTURE_HPARAMS, kind_of
from experiments import train

HPARAMS_KEY = "__hparams__"
FLAGS = flags.FLAGS


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """(state_dict as numpy arrays, the hyperparameters stored with it or None) of an .npz or PyTorch file."""
  extension = os.path.splitext(path)[1].lower()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--checkpoint={path!r}: no such file.")
  if extension == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
    stored = arrays.pop(HPARAMS_KEY, None)
    return arrays, None if stored is None else json.loads(str(stored))
  if extension in (".pkl", ".pt", ".pth"):
    return _read_torch(path)
  raise ValueError(f"--checkpoint={path!r}: expected a .npz, .pkl, .pt or .pth file.")


def _read_torch(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  try:
    import torch  # optional: only PyTorch pickles need it
  except ImportError:
    npz = os.path.splitext(path)[0] + ".npz"
    convert = (
      f"import numpy, torch; sd = torch.load({path!r}, map_location='cpu');"
      f" numpy.savez({npz!r}, **{{k: v.numpy() for k, v in sd.items()}})"
    )
    raise ValueError(
      f"--checkpoint={path!r} is a PyTorch pickle, and torch is not installed here. Install it"
      f" (pip install 'deqjax[torch]'), or convert the file to .npz where torch is:\n  python -c \"{convert}\""
    ) from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # a whole pickled nn.Module, or not a checkpoint at all
    raise ValueError(
      f"--checkpoint={path!r} is not a state_dict (torch.load with weights_only=True failed:"
      f" {str(error).splitlines()[0]}). Save the"
      " reference model's model.state_dict() instead (its train script's save_weights does)."
    ) from None
  hparams = None
  if isinstance(loaded, dict) and "state_dict" in loaded:
    loaded, hparams = loaded["state_dict"], loaded.get("hparams")
  if not isinstance(loaded, dict) or not all(hasattr(v, "numpy") for v in loaded.values()):
    raise ValueError(f"--checkpoint={path!r} holds a {type(loaded).__name__}, not a state_dict of tensors.")
  return {name: value.detach().cpu().numpy() for name, value in loaded.items()}, hparams


def checked_hparams(kind: str, from_config: dict, given: dict | None, source: str) -> dict:
  """The config's hyperparameters; `given` ones that change the function must agree with them."""
  if not given:
    return from_config
  given = dict(given)
  names = list(ARCHITECTURE_HPARAMS[kind])
  if kind == "transformer":
    if "d_embed" in given and given["d_embed"] is None:  # the reference's default: d_model
      given["d_embed"] = given.get("d_model", from_config["d_model"])
    if "tie_projs" in given:  # the reference leaves clusters past the list untied
      given["tie_projs"] = list(given["tie_projs"]) + [False] * (
        len(from_config["tie_projs"]) - len(given["tie_projs"])
      )
    if from_config["div_val"] == 1 and from_config["d_embed"] == from_config["d_model"]:
      names.remove("tie_projs")  # no projections to tie
  contradictions = [
    f"{name}={given[name]!r} ({source}) but the config gives {name}={from_config[name]!r}"
    for name in names
    if name in given and _normalised(given[name]) != _normalised(from_config[name])
  ]
  if contradictions:
    raise ValueError("the checkpoint does not match the config: " + "; ".join(contradictions) + ".")
  # Weight norm changes the names, not the function: a wnorm=False checkpoint imports as weight-normed.
  return {**from_config, "wnorm": bool(given.get("wnorm", from_config["wnorm"]))}


def _normalised(value):
  """Lists and tuples compared alike."""
  return list(value) if isinstance(value, (list, tuple)) else value


def import_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, workdir: str, hparams_file: str = "") -> int:
  """Writes `checkpoint` as the workdir's checkpoint of `config`; returns its step."""
  manager = train.checkpoint_manager(workdir, config.keep_checkpoints)
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
  rt, params = train.setup(config)
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
  memory = train.init_memory(rt, params, c.batch_size)
  progress = train.Progress(step=c.num_train_steps)
  train.save_checkpoint(manager, rt, progress, params, opt_state, memory)
  return progress.step


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, path: str) -> None:
  """Writes the workdir's latest checkpoint as the reference's state_dict (.npz) with `__hparams__`."""
  rt, params, _ = train.restore_trained(config, workdir)
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
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"Wrote the checkpoint of step {step} to {os.path.join(FLAGS.workdir, 'checkpoints')}.", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)

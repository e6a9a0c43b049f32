"""Reading the reference code's checkpoint files: `.npz` always, PyTorch pickles when torch is installed.

The state dict's names are the reference's (`deqjax.models.from_reference` maps them); the
constructor's arguments may be stored with it (an npz entry `__hparams__` holding JSON, or a
pickled `{"state_dict", "hparams"}`) and are checked against a config's by `checked_hparams`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from deqjax.models.reference import ARCHITECTURE_HPARAMS

HPARAMS_KEY = "__hparams__"


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

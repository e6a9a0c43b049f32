"""experiments.tools.import_reference: a reference state_dict in, `--mode=eval` on it, and the way back out."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from paths import REPO
from tiny_training import TINY, TINY_MODEL, tiny_config

from deqjax.models import to_reference
from deqjax.models.reference_files import read_checkpoint
from experiments import trainer
from experiments.tools import import_reference

EXPORTED = dict(num_train_steps=3, pretrain_steps=1, eval_max_segments=2)


@pytest.fixture(scope="module")
def exported(tfds_dir, tmp_path_factory):
  """(config, the initial parameters' test perplexity, the reference npz written from them)."""
  tmp = tmp_path_factory.mktemp("import")
  config = tiny_config(tfds_dir, **EXPORTED)
  rt, params = trainer.setup(config)
  state_dict, hparams = to_reference(nnx.merge(rt.graphdef, jax.device_get(params), rt.rest))
  path = str(tmp / "reference.npz")
  np.savez(path, **state_dict, __hparams__=np.asarray(json.dumps(hparams)))
  return config, trainer.evaluate_task(rt, params, "deq", final=True)["test_ppl"], path, state_dict


def test_imported_checkpoint_evaluates_to_the_same_perplexity(exported, tmp_path):
  config, expected, path, state_dict = exported
  assert import_reference.import_checkpoint(config, path, str(tmp_path)) == config.num_train_steps
  assert trainer.evaluate(config, str(tmp_path))["test_ppl"] == expected  # same weights, same function: bit for bit
  # ... and back out: the export is the state_dict that went in.
  out = str(tmp_path / "export.npz")
  import_reference.export_checkpoint(config, str(tmp_path), out)
  back, hparams = read_checkpoint(out)
  assert sorted(back) == sorted(state_dict) and hparams["d_model"] == config.model.d_model
  assert all(np.array_equal(back[name], state_dict[name]) for name in state_dict)
  with pytest.raises(ValueError, match="already holds checkpoints .latest step 3."):
    import_reference.import_checkpoint(config, path, str(tmp_path))


def test_the_command_line_imports_then_main_evaluates(exported, tmp_path):
  config, expected, path, _ = exported
  fields = {
    **TINY,
    **{f"model.{k}": v for k, v in TINY_MODEL.items()},
    **EXPORTED,
    "data.data_dir": config.data.data_dir,
    "data.manual_dir": config.data.manual_dir,
  }
  overrides = [f"--config.{k}={v}" for k, v in fields.items()]
  common = [f"--config={os.path.join(REPO, 'experiments', 'configs', 'default.py')}", f"--workdir={tmp_path}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the same devices as this process: the same numbers
  run = lambda *args: subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  imported = run(
    sys.executable, "-m", "experiments.tools.import_reference", f"--checkpoint={path}", *common, *overrides
  )
  assert imported.returncode == 0, imported.stderr
  assert "Wrote the checkpoint of step 3" in imported.stdout
  evaluated = run(sys.executable, "-m", "experiments.main", "--mode=eval", *common, *overrides)
  assert evaluated.returncode == 0, evaluated.stderr
  assert evaluated.stdout.strip().splitlines()[-1] == f"test_ppl={expected!r}"
  with pytest.raises(ValueError, match="already holds checkpoints"):  # the tool prints it as one line, as above
    import_reference.import_checkpoint(config, path, str(tmp_path))


def test_contradicting_hyperparameters_name_both_values(exported, tmp_path):
  config, _, path, state_dict = exported
  hparams_file = tmp_path / "hparams.json"
  hparams_file.write_text(json.dumps({"n_head": 4, "d_head": 8, "pre_lnorm": True, "dropout": 0.3}))
  with pytest.raises(ValueError) as error:
    import_reference.import_checkpoint(config, path, str(tmp_path / "w"), str(hparams_file))
  message = str(error.value)
  assert f"n_head=4 (in {hparams_file}) but the config gives n_head=2" in message
  assert "pre_lnorm=True" in message and "pre_lnorm=False" in message
  assert "dropout" not in message  # a training setting, not the function
  # A state_dict of other shapes names the entries.
  smaller = {k: (v[:-1] if k == "inject_conv.bias" else v) for k, v in state_dict.items()}
  np.savez(tmp_path / "smaller.npz", **smaller)
  with pytest.raises(
    ValueError, match=r"does not fit the config's model.*inject_conv.bias \(95,\) \(expected \(96,\)\)"
  ):
    import_reference.import_checkpoint(config, str(tmp_path / "smaller.npz"), str(tmp_path / "w2"))


def test_pytorch_pickles_without_torch_say_how_to_convert(tmp_path, monkeypatch):
  path = tmp_path / "model.pkl"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  how = r"(?s)torch is not installed here. Install it .pip install .deqjax\[torch\]...*numpy.savez\(.*model.npz"
  with pytest.raises(ValueError, match=how):
    read_checkpoint(str(path))
  with pytest.raises(ValueError, match="expected a .npz, .pkl, .pt or .pth file"):
    (tmp_path / "model.bin").write_bytes(b"")
    read_checkpoint(str(tmp_path / "model.bin"))
  with pytest.raises(FileNotFoundError, match="no such file"):
    read_checkpoint(str(tmp_path / "missing.npz"))


def test_pytorch_pickles_are_read_when_torch_is_installed(exported, tmp_path):
  torch = pytest.importorskip("torch")  # an optional extra: deqjax[torch]
  _, _, _, state_dict = exported
  tensors = {name: torch.from_numpy(np.array(value)) for name, value in state_dict.items()}
  torch.save(tensors, tmp_path / "model.pkl")
  torch.save({"state_dict": tensors, "hparams": {"n_head": 2}}, tmp_path / "model.pt")
  torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
  arrays, hparams = read_checkpoint(str(tmp_path / "model.pkl"))
  assert hparams is None and sorted(arrays) == sorted(state_dict)
  assert all(np.array_equal(arrays[k], state_dict[k]) for k in state_dict)
  assert read_checkpoint(str(tmp_path / "model.pt"))[1] == {"n_head": 2}
  with pytest.raises(ValueError, match="is not a state_dict .torch.load with weights_only=True failed"):
    read_checkpoint(str(tmp_path / "module.pt"))

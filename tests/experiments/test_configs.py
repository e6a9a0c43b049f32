"""The WikiText-103 configs: parameter counts (exact for the reference's shipped models) and config errors."""

import importlib
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from deqjax.models import TransformerXLConfig, TransformerXLLM
from experiments.analysis.paper import PAPER
from experiments.analysis.runs import load_config
from experiments.model_configs import architecture
from experiments.trainer.models import abstract_model, count_parameters

CONFIGS = sorted(  # the WikiText-103 rows
  p.stem for p in pathlib.Path("experiments/configs/wikitext103").glob("*.py") if p.stem not in ("__init__", "common")
)
# The reference's shipped models, and the 70-layer TrellisNet, which is the DEQ-TrellisNet's cell unrolled.
SHIPPED = {"deq_transformer_medium_adaptive": 97_691_888, "deq_trellisnet": 174_168_738, "trellisnet_70l": 174_168_738}


def load(name):
  return load_config("wikitext103", name)


def test_every_row_of_the_table_has_a_config():
  assert CONFIGS == sorted(PAPER["wikitext103"])
  assert all(load(name).row == name and load(name).study == "wikitext103" for name in CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_counts(name):
  config = load(name)
  total, non_embedding = count_parameters(abstract_model(config))
  if name in SHIPPED:
    assert total == SHIPPED[name]
  else:  # sized to the paper's table: within 2% of both of its columns
    paper = PAPER["wikitext103"][name]
    assert abs(total / 1e6 / paper.params_m - 1) < 0.02
    assert abs(non_embedding / 1e6 / paper.non_embedding_m - 1) < 0.02


def test_count_params_script_prints_the_counts_last():
  out = subprocess.run(
    [sys.executable, "-m", "experiments.count_params", "--config=experiments/configs/wikitext103/deq_trellisnet.py"],
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.strip().splitlines()[-1] == "params=174168738 non_embedding=40032000"


def test_unknown_and_inconsistent_fields_are_errors():
  config = load("deq_transformer_small")
  config.model.d_modle = 3
  with pytest.raises(ValueError, match=r"Unknown field\(s\) \['d_modle'\] in config.model for deq_transformer"):
    architecture(config)
  config = load("deq_transformer_small")
  config.execution = "layers"
  with pytest.raises(ValueError, match="execution='layers' does not fit model_name='deq_transformer'"):
    architecture(config)


def _parsed_config(*overrides):
  argv = ["main", "--config=experiments/configs/default.py", *overrides]
  flag_values = flags.FlagValues()  # absl's parsing as main.py has it, on argv rather than sys.argv
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_every_model_field_can_be_set_on_the_command_line():
  # The default config leaves broyden_history (default None), correction_steps and tie_projs unset.
  config = _parsed_config(
    "--config.model.pretrain_depth=3",
    "--config.model.broyden_history=8",
    "--config.model.correction_steps=(1, 2)",
    "--config.model.tie_projs=(True,)",
  )
  model = architecture(config)
  settings = (model.pretrain_depth, model.broyden_history, model.correction_steps, model.tie_projs)
  assert settings == (3, 8, (1, 2), (True,))
  untouched = architecture(_parsed_config())
  assert (
    untouched.broyden_history is None and untouched.correction_steps == () and untouched.tie_projs == (False,)
  )  # its default
  with pytest.raises((AttributeError, KeyError), match="normm"):  # a field no model has is still an error
    _parsed_config("--config.model.normm=weight")


def test_transformer_xl_baseline_is_causal_and_keeps_per_layer_memory():
  config = TransformerXLConfig(
    n_token=40, d_model=16, n_head=2, d_inner=24, cutoffs=(10, 25), div_val=2, mem_len=3, n_layer=3
  )
  model = TransformerXLLM(config, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda model, inputs, targets, memory: model(inputs, targets, memory, dtype=jnp.float64))
  tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, 40)
  first = forward(model, tokens, tokens, None)
  assert len(first.memory) == 3 and all(m.shape == (2, 3, 16) for m in first.memory)
  changed = tokens.at[:, 3].set((tokens[:, 3] + 5) % 40)
  for memory in (None, first.memory):
    a = forward(model, tokens, tokens, memory).nll
    b = forward(model, changed, tokens, memory).nll
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-13, rtol=0)
    assert float(jnp.max(jnp.abs(a[:, 3:] - b[:, 3:]))) > 1e-6
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(tokens, tokens, first.memory).nll)))(model)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_memory_table_measures_depth_independence_of_the_deq():
  # Compiled from shapes only (nothing allocated): the unrolled model grows with depth, the DEQ
  # with a fixed Broyden history does not, and it needs less than 16 unrolled layers.
  from experiments.analysis import memory_table as mt

  base = mt.row_config("deq_transformer_small")
  unrolled = [mt.step_memory(mt.with_depth(base, "unrolled", depth), 4, 32)["temp"] for depth in (8, 32)]
  deq = [mt.deq_memory(mt.with_depth(base, "deq", depth), 4, 32, history=4) for depth in (8, 32)]
  assert unrolled[1] > 2 * unrolled[0]
  assert abs(deq[1] / deq[0] - 1) < 0.05
  tied_16 = mt.step_memory(mt.row_config("transformer_xl_small_tied_16l"), 4, 32)["total"]
  assert deq[0] < 0.5 * tied_16


def test_deq_step_costs_between_one_and_two_unrolled_layers_plus_its_broyden_buffers():
  # A DEQ step stores one linearised layer for its adjoint solve and, as the reference, backprops
  # the f(z*) it feeds the softmax: at least one unrolled layer, at most two, plus its Broyden
  # buffers (2 vectors per kept update) and a few solver vectors.
  from experiments.analysis import memory_table as mt

  base = mt.row_config("deq_transformer_small")
  batch, length = 4, 32
  one, two = (mt.step_memory(mt.with_depth(base, "unrolled", depth), batch, length)["total"] for depth in (1, 2))
  vector = batch * length * base.model.d_model * 4  # one float32 state
  deq = {history: mt.deq_memory(mt.with_depth(base, "deq", 8), batch, length, history) for history in (1, 8)}
  for history, total in deq.items():
    assert one + 2 * history * vector <= total <= two + (2 * history + 6) * vector, (history, total, one, two)
  per_update = (deq[8] - deq[1]) / (7 * vector)
  assert 1.5 <= per_update <= 2.1, per_update


def test_every_experiments_module_imports_alongside_the_others():
  """Scripts define their absl flags only when run: importing all of them in one process (as the tests
  and other scripts do) raises no DuplicateFlagError (e.g. --root in both table scripts), and defines none."""
  from absl import flags

  scripts = []
  for path in sorted(pathlib.Path("experiments").rglob("*.py")):
    if "configs" in path.parts or path.stem in ("torchdeq", "reference_dumps"):  # no scripts; these need torch
      continue
    name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    module = importlib.import_module(name)
    if hasattr(module, "main"):
      scripts.append(name)
      assert callable(module.define_flags), name
  defining = [name for name in flags.FLAGS.flags_by_module_dict() if "experiments" in name]
  assert defining == []
  expected = ["main", "count_params", "bench_solvers", "analysis.wikitext2_table", "analysis.copy_memory_table"]
  expected += ["analysis.copy_memory_errors"]
  expected += ["analysis.solver_analysis", "analysis.memory_table", "benchmarks.synthetic", "tools.import_reference"]
  assert {f"experiments.{name}" for name in expected} <= set(scripts)

"""The documentation's examples run as printed: the README's core example and docs/api.md's Flax one."""

import re

import jax
import numpy as np
import pytest
from paths import REPO


def python_blocks(path: str) -> list[str]:
  with open(f"{REPO}/{path}", encoding="utf-8") as text:
    return re.findall(r"```python\n(.*?)```", text.read(), flags=re.S)


def test_readme_example_solves_per_sample_and_differentiates(capsys):
  (example,) = [block for block in python_blocks("README.md") if "deqjax.fixed_point" in block]
  names = {}
  exec(example, names)  # noqa: S102 (the README's own code)
  info, grads = names["info"], names["grads"]
  assert info.nstep.shape == (32,) and bool(np.all(info.converged))
  assert float(np.max(info.rel_residual)) < 1e-4  # fixed_point's default relative tolerance
  assert all(bool(np.all(np.isfinite(g))) and float(np.max(np.abs(g))) > 0 for g in jax.tree.leaves(grads))
  assert "[" in capsys.readouterr().out  # it printed the per-sample arrays


@pytest.mark.parametrize("path", ["docs/api.md"])
def test_flax_example_trains(path):
  (example,) = [block for block in python_blocks(path) if "class TinyDEQ" in block]
  names = {}
  exec(example, names)  # noqa: S102
  loss, info = names["loss"], names["info"]
  assert float(loss) < 0.2 and bool(np.all(info.converged))  # 60 Adam steps separate the two classes

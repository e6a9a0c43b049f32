"""Runs the 2019 reference code on model variants and saves what the parity tests compare against.

Not part of deqjax: it needs PyTorch and a checkout of the reference (locuslab/deq at 3fba434),
in an environment of its own, e.g.

    python -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    git clone https://github.com/locuslab/deq /tmp/deq && git -C /tmp/deq checkout 3fba434
    /tmp/torch/bin/python experiments/tools/reference_dumps.py --reference=/tmp/deq/DEQModel \
      --variants=tests/data/reference_variants/variants.json --out=tests/data/reference_variants

Each variant (a JSON entry: kind, constructor kwargs, seed, segment length, batch, and optionally
the forward's `subseq_len`, else the segment length) is built with
random weights, run in eval mode in float64 over 3 consecutive segments with its memory, and
saved as `<name>.npz`: the state_dict under its names, and per segment `seg{s}/data`, `target`
(time-major), `nll` (per token, in order), the new memory, and the forward Broyden's final
residuals and step counts (one per sub-sequence) (the reference returns its lowest-residual iterate at the cap, so a
variant is only a parity case when that residual is tiny).
"""

import argparse
import json
import os
import sys
import types

import numpy as np


def import_reference(path):
  """The reference's model classes, with stubs for the imports its eval path does not use."""
  import torch

  sys.path.insert(0, path)
  termcolor = types.ModuleType("termcolor")
  termcolor.colored = lambda text, *args, **kwargs: text
  scipy, optimize = types.ModuleType("scipy"), types.ModuleType("scipy.optimize")
  optimize.root, scipy.optimize = None, optimize
  sys.modules.update({"termcolor": termcolor, "scipy": scipy, "scipy.optimize": optimize})
  torch.version.cuda = "10.1"  # read (unused) at import by utils/proj_adaptive_softmax.py
  torch.set_default_dtype(torch.float64)
  torch.Tensor.float = lambda self: self  # the attention mask's .float() would round the float64 run
  import modules.deq as deq
  from models.transformers.deq_transformer import DEQTransformerLM
  from models.trellisnets.deq_trellisnet import DEQTrellisNetLM
  from utils.splitcross import SplitCrossEntropyLoss

  solves = []
  broyden = deq.broyden

  def logged(g, x0, threshold, eps, name="unknown", ls=False):
    result = broyden(g, x0, threshold, eps=1e-11, name=name, ls=ls)  # a tolerance float64 can reach
    solves.append((int(result["nstep"]), float(result["diff"])))
    return result

  deq.broyden = logged
  return torch, DEQTransformerLM, DEQTrellisNetLM, SplitCrossEntropyLoss, solves


def randomize(torch, module, seed):
  """Every parameter redrawn: gains in [0.5, 1.5), the rest N(0, 1 / fan_in)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("weight_g"):
        p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
      else:
        fan_in = p.shape[1] if p.dim() > 1 else 10
        p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)


def run_variant(reference, variant):
  torch, transformer_lm, trellisnet_lm, split_ce, solves = reference
  kwargs, length, batch, seed = variant["kwargs"], variant["tgt_len"], variant["bsz"], variant["seed"]
  subseq_len = variant.get("subseq_len", length)
  generator = torch.Generator().manual_seed(seed + 1)
  stream = torch.randint(0, kwargs["n_token"], (3 * length + 1, batch), generator=generator)
  out, mems = {}, None
  if variant["kind"] == "transformer":
    model = transformer_lm(**kwargs)
    randomize(torch, model, seed)
    model.crit.keep_order = True  # per-token NLL in token order
    criterion = None
  else:
    model = trellisnet_lm(**kwargs)
    criterion = split_ce(kwargs["nout"], splits=list(variant["splits"]))
    randomize(torch, model, seed)
    randomize(torch, criterion, seed + 7)
  model.eval()
  with torch.no_grad():
    for s in range(3):
      data, target = stream[s * length : (s + 1) * length], stream[s * length + 1 : (s + 1) * length + 1]
      solves.clear()
      if criterion is None:
        ret = model(data, target, mems, train_step=-1, f_thres=100, b_thres=100, subseq_len=subseq_len)
        nll, mems = ret[0], [m.clone() for m in ret[1:]]
        out[f"seg{s}/new_mems_z"], out[f"seg{s}/new_mems_u"] = mems[0].numpy(), mems[1].numpy()
      else:
        (_, _, hidden), mems = model(
          data, target, mems, train_step=-1, f_thres=100, b_thres=100, subseq_len=subseq_len, decode=False
        )
        hidden = hidden.reshape(-1, hidden.size(-1))
        if variant["splits"]:
          logp = criterion.logprob(model.decoder.weight, model.decoder.bias, hidden)
        else:  # the criterion's logprob has no single-split path
          logp = torch.log_softmax(model.decoder(hidden), dim=-1)
        nll = -logp.gather(1, target.reshape(-1, 1)).reshape(length, batch)
        out[f"seg{s}/new_mems"] = mems[0].numpy()
      out[f"seg{s}/data"], out[f"seg{s}/target"], out[f"seg{s}/nll"] = data.numpy(), target.numpy(), nll.numpy()
      steps, residuals = zip(*solves, strict=True)  # one solve per sub-sequence
      out[f"seg{s}/broyden_nstep"], out[f"seg{s}/broyden_diff"] = np.array(steps), np.array(residuals)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  if criterion is not None:
    state.update({f"criterion.{k}": v.numpy() for k, v in criterion.state_dict().items()})
  return {**state, **out}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", required=True, help="the reference's DEQModel/ directory")
  parser.add_argument("--variants", required=True, help="JSON file of variants")
  parser.add_argument("--out", required=True, help="directory for <name>.npz")
  args = parser.parse_args()
  reference = import_reference(os.path.abspath(args.reference))
  with open(args.variants) as f:
    variants = json.load(f)
  for name, variant in variants.items():
    arrays = run_variant(reference, variant)
    np.savez_compressed(os.path.join(args.out, f"{name}.npz"), **arrays)
    residuals = [arrays[f"seg{s}/broyden_diff"].tolist() for s in range(3)]
    print(f"{name}: forward residuals {residuals}")


if __name__ == "__main__":
  main()

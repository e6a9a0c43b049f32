r"""Time the reference's WikiText-103 evaluation setting: seconds per 1,000 tokens, with its solver residuals.

    python -m experiments.benchmarks.reference_eval                      # the shipped model, random weights
    python -m experiments.benchmarks.reference_eval --checkpoint=deq_wt103.npz --segments=10

The released DEQ-Transformer is evaluated with memory 300, segments of 75 and a forward cap of
30 on 4 ordered streams (`--mem_len`, `--tgt_len`, `--max_iter`, `--batch`); `--rtol` 1e-6
stands for its absolute stopping rule (docs/reference.md). The memory is
first filled by one segment of `mem_len` tokens (not timed); then `--segments` segments of
`tgt_len` with a full memory are timed (after one untimed call that compiles). Tokens are drawn
at random: the cost of a segment depends on the solver's steps, not on which words it reads,
and the forward steps and residuals are printed beside the time. With `--checkpoint` (an npz of
the reference's state_dict, see `experiments.tools.import_reference`) the weights are the released
model's; without, the model's initial ones (whose solves need not resemble a trained model's).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from deqjax.models import from_reference, reference_hparams
from deqjax.models.reference_files import checked_hparams, read_checkpoint
from experiments.model_configs import architecture
from experiments.trainer.models import build_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config",
    "experiments/configs/wikitext103/deq_transformer_medium_adaptive.py",
    "Config of the model.",
    lock_config=False,
  )
  flags.DEFINE_string("checkpoint", "", "Optional npz of the reference's state_dict (else initial weights).")
  flags.DEFINE_integer("batch", 4, "Ordered streams evaluated together.")
  flags.DEFINE_integer("tgt_len", 75, "Segment length.")
  flags.DEFINE_integer("mem_len", 300, "Memory length.")
  flags.DEFINE_integer("max_iter", 30, "Forward solver cap.")
  flags.DEFINE_float("rtol", 1e-6, "Forward relative tolerance (1e-6: the reference's absolute stop, see docs).")
  flags.DEFINE_integer("segments", 3, "Timed segments.")


def build(config, checkpoint: str):
  if not checkpoint:
    return build_model(config, nnx.Rngs(config.seed))
  state_dict, stored = read_checkpoint(checkpoint)
  hparams = checked_hparams("transformer", reference_hparams(architecture(config)), stored, f"stored in {checkpoint}")
  return from_reference(state_dict, hparams)


def main(argv):
  del argv
  config = FLAGS.config
  config.model.mem_len = FLAGS.mem_len
  config.model.max_iter = FLAGS.max_iter
  config.model.rtol = FLAGS.rtol
  model = build(config, FLAGS.checkpoint)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  n_token = model.config.n_token

  @jax.jit
  def segment(params, tokens, targets, memory):
    out = nnx.merge(graphdef, params, rest)(tokens, targets, memory)
    return jnp.sum(out.nll), out.memory, out.info

  rng = np.random.default_rng(0)
  draw = lambda length: jnp.asarray(rng.integers(0, n_token, (FLAGS.batch, length)), jnp.int32)
  memory = model.init_memory(FLAGS.batch)
  _, memory, _ = jax.block_until_ready(segment(params, draw(FLAGS.mem_len), draw(FLAGS.mem_len), memory))
  jax.block_until_ready(segment(params, draw(FLAGS.tgt_len), draw(FLAGS.tgt_len), memory))  # compiles
  seconds, steps, residuals, converged = [], [], [], []
  for _ in range(FLAGS.segments):
    started = time.perf_counter()
    _, memory, info = jax.block_until_ready(segment(params, draw(FLAGS.tgt_len), draw(FLAGS.tgt_len), memory))
    seconds.append(time.perf_counter() - started)
    steps.append(np.asarray(info.nstep))
    residuals.append(np.asarray(info.rel_residual))
    converged.append(np.asarray(info.converged))
  tokens = FLAGS.batch * FLAGS.tgt_len
  per_1k = 1000 * np.asarray(seconds) / tokens
  steps, residuals, converged = (np.concatenate(a) for a in (steps, residuals, converged))
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; weights: {FLAGS.checkpoint or 'initial'}")
  print(f"segments of {FLAGS.batch} x {FLAGS.tgt_len} tokens, memory {FLAGS.mem_len}, forward cap {FLAGS.max_iter}")
  print(
    f"forward solves: {converged.mean():.0%} converged (relative tolerance {model.config.rtol:g}); steps mean"
    f" {steps.mean():.1f}, max {steps.max()}; relative residual median {np.median(residuals):.2e}, max"
    f" {residuals.max():.2e}"
  )
  print(f"seconds per 1,000 tokens: median {np.median(per_1k):.2f} (min {per_1k.min():.2f}, max {per_1k.max():.2f})")


if __name__ == "__main__":
  define_flags()
  app.run(main)

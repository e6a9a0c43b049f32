r"""Train or evaluate a model from an ml_collections config file (any task: WikiText, copy memory).

    python -m experiments.main --config=experiments/configs/default.py --workdir=/tmp/deqjax_default
    python -m experiments.main --config=... --workdir=... --mode=eval --config.eval_tgt_len=75
    python -m experiments.main --config=... --config.model.max_iter=20   # any field; an unknown one exits naming it

Training resumes from the workdir's latest checkpoint. The last printed line is the
task's test result at full precision: `test_ppl=<float>` (WikiText) or `test_loss=<float>`
(copy memory). Multi-host: pass --coordinator_address,
--num_processes and --process_id (or --distributed on platforms that detect them).
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This script's flags; defined only when it runs, so that importing its functions defines none."""
  config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (then test) or eval (the latest checkpoint).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
  flags.mark_flags_as_required(["config", "workdir"])
  flags.register_validator("workdir", lambda value: value is None or bool(value.strip()), "must name a folder.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one-line errors for what it would answer with a traceback.

  A missing or broken `--config` file is named. An override `--config.<path>=...` of a field the
  config lacks (a bare AttributeError or KeyError carrying one key, from ml_collections) is named
  in full, with the fields the config does have at that level.
  """
  spec = _config_spec(argv)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    _fatal(f"--config={spec}: no such file (looked from {os.getcwd()})")
  try:
    remaining = app.parse_flags_with_usage(argv)  # absl's own: flag errors print and exit 1
    FLAGS.config.keys()  # absl defers loading the file when nothing overrides it: a broken one fails here
  except Exception as error:  # noqa: BLE001 - named below, or raised as it was
    if isinstance(error, (AttributeError, KeyError)):
      _name_missing_field(argv, spec)
    _name_config_error(error, spec)
    raise
  return remaining


def _name_missing_field(argv: list[str], spec: str | None) -> None:
  """Exits naming the first `--config.<path>` override whose field the config lacks (returns if none)."""
  config = _config_named_in(spec)
  paths = [arg[len("--config.") :].split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
  for path in paths if config is not None else []:
    prefix, fields = _first_missing(config, path)
    if fields is not None:
      there = f"the fields there are {fields}" if fields else f"{prefix.rpartition('.')[0]!r} is a value, not a group"
      _fatal(f"--config.{path}: the config has no field {prefix!r}; {there}.")


def _name_config_error(error: Exception, spec: str | None) -> None:
  """Exits naming the config file and its line when `error` was raised in it (returns otherwise)."""
  path = os.path.abspath(spec.partition(":")[0]) if spec else None
  cause = error.__cause__ or error.__context__ or error
  frames = [f for e in (error, cause) for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
  if frames:
    where = f"line {frames[-1].lineno}: {frames[-1].line}"
    _fatal(f"--config={spec}: {type(cause).__name__}: {' '.join(str(cause).split())} ({where})")


def _fatal(message: str) -> None:
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.exit(1)


def _config_spec(argv: list[str]) -> str | None:
  """The value of the last `--config=<file>[:<argument>]` in argv (absl's too), or None."""
  specs = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")]
  return specs[-1] if specs else None


def _config_named_in(spec: str | None):
  """The ConfigDict of a `--config` value `<file>[:<argument>]` (None if there is none)."""
  if spec is None:
    return None
  path, _, argument = spec.partition(":")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(argument) if argument else get_config()


def _first_missing(config, path: str):
  """(the dotted prefix of `path` that does not exist, the sorted fields of its parent); (path, None) if none."""
  node, keys = config, path.split(".")
  for depth, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      return ".".join(keys[: depth + 1]), fields
    node = node[key]
  return path, None


def main(argv):
  # Imported here, not at the top: flag errors (an unknown flag, a missing config file) are reported without
  # loading JAX. (Making a config imports it: every model field is filled in from the model's config class.)
  import jax

  from experiments import trainer
  from experiments.tasks import task_class

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file operation at INFO
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  logging.info("Platform (what the numbers depend on besides the config): %s", trainer.platform())
  try:
    name = task_class(FLAGS.config).result_name
    if FLAGS.mode == "train":
      results = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
      if results is None:  # stopped by SIGTERM after saving
        return
    else:
      results = trainer.evaluate(FLAGS.config, FLAGS.workdir)
  except (trainer.NonFiniteError, trainer.WorkdirBusy, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
  if jax.process_index() == 0:
    print(f"{name}={float(results[name])!r}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)

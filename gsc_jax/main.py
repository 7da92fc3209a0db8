"""Entry point: ``python -m gsc_jax.main --config=configs/synthetic.py:15-1``.

Flags: ``--config`` (an ml_collections config file with its argument, see
configs/common.py), ``--config.<field>=<value>`` overrides, ``--workdir`` (default: the
config's ``workdir``, or runs/<dataset>_<task>_<method>_<ov|dis>_seed<seed>), and
``--distributed`` to call ``jax.distributed.initialize()`` on multi-host platforms.
"""

import json
import os
import sys
import traceback

from absl import app
from absl import logging
from absl import flags
import jax
from ml_collections import config_flags

from gsc_jax import methods
from gsc_jax import train
from gsc_jax import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/synthetic.py:15-1", "Config file and argument.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (overrides config.workdir).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (TPU pods, SLURM, ...).")

# Fields that may change between invocations sharing one work dir.
RESTARTABLE_FIELDS = ("first_step", "last_step", "stop_after_iterations", "log_every",
                      "init_step0_from", "workdir", "data.root", "data.tfds_dir",
                      "data.split_cache_dir", "data.num_threads", "data.prefetch_batches")


def default_workdir(config) -> str:
  overlap = "ov" if config.overlap else "dis"
  return os.path.join("runs", f"{config.dataset}_{config.task}_{config.method}_{overlap}"
                              f"_seed{config.seed}")


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def check_same_config(saved: dict, current: dict, workdir: str) -> None:
  """A work dir belongs to one experiment: refuse to continue it with other settings."""
  saved, current = _flatten(saved), _flatten(current)
  differences = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
                 for key in sorted(set(saved) | set(current))
                 if key not in RESTARTABLE_FIELDS and saved.get(key) != current.get(key)]
  if differences:
    raise errors.InputError(f"work dir {workdir} holds a run with a different config:\n  "
                     + "\n  ".join(differences)
                     + "\nUse another --workdir, or the same settings to resume.")


def prepare(config, workdir_flag: str | None) -> str:
  """Resolves the method preset and the work dir; prints and saves the resolved config."""
  with config.unlocked():
    filled = methods.resolve_preset(config)
  train.task_of(config)  # fail now on an unknown task
  workdir = workdir_flag or config.workdir or default_workdir(config)
  with config.unlocked():
    config.workdir = workdir
  resolved = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
      with open(path) as f:
        check_same_config(json.load(f), resolved, workdir)
    with open(path, "w") as f:
      json.dump(resolved, f, indent=2)
    print(f"work dir: {workdir}")
    print(f"method {config.method}: preset filled {', '.join(filled) or 'nothing'}")
    print("config:\n" + config.to_json_best_effort(indent=2), flush=True)
  return workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax and grain report every save at INFO level; keep the progress lines readable.
  logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  try:
    workdir = prepare(config, _WORKDIR.value)
    train.train_and_evaluate(config, workdir)
  except train.InterruptedRun as interrupted:
    print(f"{interrupted}; run the same command again to resume", file=sys.stderr)
    sys.exit(3)
  except (FileNotFoundError, ValueError) as error:
    # Bad input (data, task, config): the message says what to do; the raise site is
    # enough context, the full traceback would bury the message.
    where = traceback.extract_tb(error.__traceback__)[-1]
    print(f"error ({type(error).__name__} at {os.path.basename(where.filename)}:"
          f"{where.lineno}): {error}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """absl flag parsing, with a readable error for a ``--config.<key>`` naming no field."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
    print(f"error: unknown config field {error} in the overrides {overrides}; every field "
          "is listed in configs/common.py (get_base_config)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

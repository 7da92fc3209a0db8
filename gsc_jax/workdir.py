"""A work dir belongs to one experiment: its resolved config, and a lock while a run uses it.

``prepare`` resolves the method preset, checks every config value (gsc_jax/validation.py)
and saves the resolved config as ``<workdir>/config.json``, refusing a work dir that holds
another experiment. ``lock`` keeps a second run off a work dir in use; a lock left by a
process that no longer exists is taken over.
"""

import contextlib
import json
import os
import socket
import time

import jax

from configs import common
from gsc_jax import checkpoint
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import storage
from gsc_jax import validation

# Fields that may change between invocations sharing one work dir.
RESTARTABLE_FIELDS = ("first_step", "last_step", "stop_after_iterations", "log_every",
                      "init_step0_from", "workdir", "data.root", "data.tfds_dir",
                      "data.split_cache_dir", "data.num_threads", "data.prefetch_batches")
LOCK_FILE = "run.lock"


def default_workdir(config) -> str:
  overlap = "ov" if config.overlap else "dis"
  return storage.join("runs", f"{config.dataset}_{config.task}_{config.method}_{overlap}"
                             f"_seed{config.seed}")


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def check_same_config(saved: dict, current: dict, workdir: str, defaults: dict) -> None:
  """Refuses to continue a work dir with other settings than the ones it was run with. A
  field that a work dir written by an earlier version lacks counts as its base default
  (``defaults``: the resolved base config)."""
  saved, current, defaults = _flatten(saved), _flatten(current), _flatten(defaults)
  differences = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
                 for key in sorted(set(saved) | set(current))
                 if key not in RESTARTABLE_FIELDS and saved.get(key, defaults.get(key))
                 != current.get(key)]
  if differences:
    raise errors.InputError(
        f"work dir {workdir} holds a run with a different config:\n  "
        + "\n  ".join(differences) + "\nUse another --workdir, or the same settings to resume.")


def prepare(config, workdir_flag: str | None = None) -> str:
  """Resolves the method preset and the work dir, validates every field before any
  compute, and saves the resolved config as ``<workdir>/config.json``. Returns the work
  dir."""
  set_options = methods.options_set(config)  # before the preset fills the unset ones
  with config.unlocked():
    methods.resolve_preset(config)
  validation.validate(config, jax.device_count(), set_options)
  workdir = workdir_flag or config.workdir or default_workdir(config)
  with config.unlocked():
    config.workdir = workdir
  resolved = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    storage.make_dirs(workdir)
    path = storage.join(workdir, "config.json")
    if storage.exists(path):
      defaults = common.get_base_config(config.dataset, config.task)
      check_same_config(checkpoint.read_json(path), resolved, workdir,
                        json.loads(defaults.to_json_best_effort()))
    checkpoint.write_json(path, resolved)
  return workdir


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, owned by someone else
    return True
  return True


def _take_lock(path: str) -> bool:
  """Creates the lock file; False if it already exists. Locally the creation is exclusive;
  an object store has no exclusive creation, so there two runs started at the same moment
  could both take the lock (it still refuses a run started while another one works)."""
  holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
  if storage.is_object_store(path):
    if storage.exists(path):
      return False
    storage.write_text(path, holder)
    return True
  try:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    return False
  with os.fdopen(descriptor, "w") as f:
    f.write(holder)
  return True


@contextlib.contextmanager
def lock(workdir: str, log=print):
  """Holds ``<workdir>/run.lock`` (process 0 only) while the block runs.

  A lock held by a live process refuses the run with a message naming it; one whose process
  is gone (same host) is taken over with a note.
  """
  if jax.process_index() != 0:
    yield
    return
  storage.make_dirs(workdir)
  path = storage.join(workdir, LOCK_FILE)
  while not _take_lock(path):
    try:
      holder = json.loads(storage.read_text(path))
    except (OSError, ValueError):  # half-written by a process that died at once
      holder = {}
    pid, host = holder.get("pid"), holder.get("host")
    if host not in (None, socket.gethostname()):
      raise errors.InputError(
          f"work dir {workdir} is in use by process {pid} on host {host} ({path}); wait for "
          "that run to end, or delete the lock file if it is no longer running")
    if isinstance(pid, int) and _process_exists(pid):
      since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
      raise errors.InputError(
          f"work dir {workdir} is in use by process {pid} (running since {since}); wait for "
          "it to end or stop it, or use another --workdir")
    log(f"note: taking over the stale lock of process {pid}, which no longer runs ({path})")
    storage.remove_file(path)
  try:
    yield
  finally:
    storage.remove_file(path)

"""All checkpoint reading and writing (orbax), and the checksums that guard it.

Work-dir layout of one run::

  <workdir>/config.json                  the resolved config
  <workdir>/run.lock                     while a run uses the work dir (gsc_jax/workdir.py)
  <workdir>/log.jsonl                    strict JSON lines: progress, evaluations, restarts
  <workdir>/tensorboard/                 TensorBoard events (gsc_jax/tensorboard.py)
  <workdir>/results.csv, summary.json    per-step results; miou.png, their plot
  <workdir>/step_<t>/checkpoints/<it>/   train state + grain iterator state (exact resume)
  <workdir>/step_<t>/rejected_checkpoints/<it>/   a train checkpoint that failed its check
  <workdir>/step_<t>/export/             params + batch stats at the end of step t
  <workdir>/step_<t>/prototypes.npz      GSC's class prototypes at the end of step t
  <workdir>/step_<t>/export_meta.json    written last: the export is complete
  <workdir>/step_<t>/entropy_thresholds.npz   PLOP's thresholds used while training step t
  <workdir>/step_<t>/metrics.json        evaluation after step t: the step is finished
  <workdir>/step_<t>/predictions.png     image | ground truth | prediction after step t

Checksums: once a train checkpoint or an export is completely written (a train checkpoint is
written in the background; the iteration loop looks every iteration whether it is done),
process 0 writes ``checksums.json`` inside its directory (the size and SHA-256 of every file in it). Every
process checks them before the directory is read. An export that fails the check is an
``errors.InputError`` naming the file; a train checkpoint that fails it (or has no
``checksums.json``: it was never completed) is moved to ``rejected_checkpoints/`` and the
step resumes from the newest good one, or from its beginning when none is left.
"""

import io
import json
import zipfile
import zlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gsc_jax import errors
from gsc_jax import mesh as mesh_lib
from gsc_jax import reporting
from gsc_jax import storage

CHECKSUMS_FILE = "checksums.json"
REJECTED_DIR = "rejected_checkpoints"


def step_dir(workdir: str, step: int) -> str:
  return storage.join(storage.absolute(workdir), f"step_{step}")


def write_json(path: str, data) -> None:
  """Writes JSON atomically from process 0, so a kill never leaves half a file."""
  if jax.process_index() == 0:
    storage.write_text(path, json.dumps(data, indent=2))


# What to do about a corrupt JSON file of the work dir, by its name.
JSON_REMEDIES = {
    "metrics.json": "delete it and run again: the step's export is evaluated again",
    "export_meta.json": "delete it and run again: the step is trained again",
    "config.json": "delete it and run again with the same settings: it is written again",
    "summary.json": "delete it and run again: it is written again from the steps' metrics",
}


def read_json(path: str):
  """The JSON content of ``path``; an ``errors.InputError`` naming it when it is corrupt."""
  try:
    return json.loads(storage.read_bytes(path).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    remedy = JSON_REMEDIES.get(storage.path(path).name, "restore it or delete it")
    raise errors.InputError(f"{path} is corrupt (not valid JSON: {error}); {remedy}") from None


# --- checksums -----------------------------------------------------------------------------

def _files_under(directory: str) -> list[str]:
  """Every file under ``directory`` but its checksums file, relative and sorted."""
  return [relative for relative in storage.files_under(directory) if relative != CHECKSUMS_FILE]


def write_checksums(directory: str) -> None:
  """Writes ``<directory>/checksums.json`` (size and SHA-256 of every other file) from
  process 0; call it only once everything in ``directory`` is written."""
  if jax.process_index() != 0:
    return
  files = {relative: {"size": storage.size(storage.join(directory, relative)),
                      "sha256": storage.sha256(storage.join(directory, relative))}
           for relative in _files_under(directory)}
  write_json(storage.join(directory, CHECKSUMS_FILE), {"algorithm": "sha256", "files": files})


def checksum_problem(directory: str, shown_under: str = "") -> str | None:
  """None when every file listed in ``<directory>/checksums.json`` has its recorded size
  and SHA-256; otherwise what is wrong, naming the first bad file (its path relative to
  ``directory``, joined to ``shown_under``). Files that are not listed are not read."""
  def shown(relative):
    return f"{shown_under.rstrip('/')}/{relative}" if shown_under else relative

  try:
    listed = read_json(storage.join(directory, CHECKSUMS_FILE))["files"]
    expected = {str(relative): (int(entry["size"]), str(entry["sha256"]))
                for relative, entry in listed.items()}
  except FileNotFoundError:
    return f"no {shown(CHECKSUMS_FILE)} (its save never completed)"
  except (errors.InputError, OSError, ValueError, KeyError, TypeError, AttributeError):
    return f"{shown(CHECKSUMS_FILE)} is corrupt"
  for relative, (size, _) in sorted(expected.items()):  # sizes first: quick, finds truncation
    path = storage.join(directory, relative)
    if not storage.is_file(path):
      return f"{shown(relative)} is missing"
    if storage.size(path) != size:
      return f"{shown(relative)} has {storage.size(path)} bytes instead of {size}"
  for relative, (_, digest) in sorted(expected.items()):
    if storage.sha256(storage.join(directory, relative)) != digest:
      return f"checksum mismatch in {shown(relative)}"
  return None


def _agreed(problem: str | None) -> str | None:
  """``problem``, or a problem when any other process found one: every process takes the
  same decision about a checkpoint."""
  if mesh_lib.any_process_now(problem is not None) and problem is None:
    return "another process found a problem with it"
  return problem


# --- train state inside a step -------------------------------------------------------------

TRAIN_CHECKPOINTS_DIR = "checkpoints"


def train_checkpoints_dir(workdir: str, step: int) -> str:
  return storage.join(step_dir(workdir, step), TRAIN_CHECKPOINTS_DIR)


def remove_train_checkpoints(workdir: str, step: int) -> bool:
  """Removes step ``step``'s train checkpoints (process 0); the export holds everything
  later steps need. Returns whether there were any."""
  directory = train_checkpoints_dir(workdir, step)
  if not storage.exists(directory):
    return False
  if jax.process_index() == 0:
    storage.remove_tree(directory)
  return True


class TrainCheckpoints:
  """The two newest train-state checkpoints of one incremental step (an orbax
  ``CheckpointManager``, which saves in the background); each gets its checksums once
  its save is finished."""

  def __init__(self, workdir: str, step: int):
    self.workdir, self.step = storage.absolute(workdir), step
    self.directory = train_checkpoints_dir(workdir, step)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unsealed = None  # the iteration saved last, whose checksums are not written yet

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def close(self) -> None:
    """Finishes a save in progress (with its checksums) and closes the manager."""
    self.wait_until_finished()
    self.manager.close()

  def path(self, iteration: int) -> str:
    return storage.join(self.directory, str(iteration))

  def shown(self, iteration: int) -> str:
    """The checkpoint's directory relative to the work dir, for messages."""
    return self._relative(self.path(iteration))

  def _relative(self, location: str) -> str:
    return location[len(self.workdir):].lstrip("/")

  def wait_until_finished(self) -> None:
    """Waits for a save in progress, then writes its checksums."""
    self.manager.wait_until_finished()
    if self._unsealed is not None:
      write_checksums(self.path(self._unsealed))
      self._unsealed = None

  def seal_if_finished(self) -> None:
    """Writes the checksums of the last save once it has finished in the background, so
    that a run killed before its next save still resumes from it; call it every
    iteration (it does not wait)."""
    if self._unsealed is not None and not self.manager.is_saving_in_progress():
      self.wait_until_finished()  # returns at once; makes sure the save is finalised

  def save(self, iteration: int, state, data_iterator) -> None:
    """Starts saving ``state`` and the iterator's position (after the previous save is
    finished and has its checksums)."""
    self.wait_until_finished()
    self.manager.save(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iterator)))
    self._unsealed = iteration

  def _restore(self, iteration: int, abstract_state, data_iterator):
    return self.manager.restore(iteration, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iterator)))["state"]

  def _reject(self, iteration: int) -> str:
    """Moves a failed checkpoint to ``step_<t>/rejected_checkpoints/`` (out of the
    manager's sight, kept for inspection); returns its new place, relative to the work dir."""
    rejected = storage.join(step_dir(self.workdir, self.step), REJECTED_DIR)
    target, suffix = storage.join(rejected, str(iteration)), 1
    while storage.exists(target):
      target, suffix = storage.join(rejected, f"{iteration}-{suffix}"), suffix + 1
    if jax.process_index() == 0:
      storage.move_tree(self.path(iteration), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"rejected_{self.step}_{iteration}")
    self.manager.reload()
    return self._relative(target)

  def restore_newest_good(self, abstract_state, data_iterator):
    """Restores the newest checkpoint that passes its checksums and restores cleanly into
    ``abstract_state``'s shardings (and the iterator's position). Every one that fails is
    moved aside, saying so, and a restart record in ``log.jsonl`` then says where the step
    really goes on. Returns ``(state, iteration)``, or ``(None, None)`` when none is good
    (the iterator may then be moved: make a new one)."""
    iterations = self.all_steps()[::-1]
    for index, iteration in enumerate(iterations):
      problem = _agreed(checksum_problem(self.path(iteration)))
      if problem is None:
        try:
          state = self._restore(iteration, abstract_state, data_iterator)
        except Exception as error:  # pylint: disable=broad-except
          problem = f"cannot be restored ({type(error).__name__}: {_first_line(error)})"
        problem = _agreed(problem)
      if problem is None:
        if index > 0:
          reporting.append_restart(self.workdir, self.step, iteration)
        return state, iteration
      moved = self._reject(iteration)
      following = (f"falling back to iteration {iterations[index + 1]}"
                   if index + 1 < len(iterations)
                   else f"no good checkpoint is left: step {self.step} starts from its beginning")
      reporting.log(f"{self.shown(iteration)}: {problem} (moved to {moved}); {following}")
    if iterations:
      reporting.append_restart(self.workdir, self.step, 0)
    return None, None


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:200] if lines else ""


def train_manager(workdir: str, step: int) -> TrainCheckpoints:
  """The train-state checkpoints of one incremental step."""
  return TrainCheckpoints(workdir, step)


# --- the export handed to the next step ----------------------------------------------------

def export_meta_path(workdir: str, step: int) -> str:
  """``step_<t>/export_meta.json``, written last: the export is complete."""
  return storage.join(step_dir(workdir, step), "export_meta.json")


def export_exists(workdir: str, step: int) -> bool:
  return storage.exists(export_meta_path(workdir, step))


def export_path(workdir: str, step: int) -> str:
  return storage.join(step_dir(workdir, step), "export")


def save_export(workdir: str, step: int, variables, meta: dict) -> None:
  """Saves the end-of-step model (params, batch stats), its checksums, then its metadata
  (which marks the export complete)."""
  checkpointer = ocp.StandardCheckpointer()
  path = export_path(workdir, step)
  checkpointer.save(path, variables, force=True)
  checkpointer.wait_until_finished()
  write_checksums(path)
  write_json(export_meta_path(workdir, step), {**meta, "checksums": CHECKSUMS_FILE})


def verify_export(workdir: str, step: int) -> dict:
  """Step ``step``'s export metadata, once the export's files pass their checksums; an
  ``errors.InputError`` naming the bad file otherwise. An export saved before checksums
  existed (no ``checksums`` in its metadata) is read unchecked, saying so."""
  meta_path = export_meta_path(workdir, step)
  if not export_exists(workdir, step):
    raise errors.MissingFileError(
        f"no finished export of step {step} in {step_dir(workdir, step)}: run that step first")
  meta = read_json(meta_path)
  path = export_path(workdir, step)
  if "checksums" not in meta and not storage.exists(storage.join(path, CHECKSUMS_FILE)):
    reporting.log(f"note: the export of step {step} in {path} has no checksums (saved by "
                  "an earlier version); it is read unchecked")
    return meta
  problem = _agreed(checksum_problem(path, shown_under=path))
  if problem is not None:
    raise errors.InputError(
        f"the export of step {step} is corrupt: {problem}; delete {meta_path} and run "
        f"again to train step {step} again (or restore {path} from a copy)")
  return meta


def load_export(workdir: str, step: int, abstract_variables):
  """Loads step ``step``'s export, after checking its checksums, into the shapes and
  shardings of ``abstract_variables``."""
  meta = verify_export(workdir, step)
  variables = ocp.StandardCheckpointer().restore(export_path(workdir, step), abstract_variables)
  return variables, meta


def read_export_arrays(workdir: str, step: int):
  """Step ``step``'s exported variables as numpy arrays, after checking its checksums, on
  any device topology (for analysis and tests; training uses ``load_export``)."""
  verify_export(workdir, step)
  path = export_path(workdir, step)
  checkpointer = ocp.StandardCheckpointer()
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                          checkpointer.metadata(path).item_metadata)
  return jax.tree.map(np.asarray, checkpointer.restore(path, abstract))


# --- the results of data passes ------------------------------------------------------------

def pass_result_path(workdir: str, step: int, name: str) -> str:
  return storage.join(step_dir(workdir, step), f"{name}.npz")


def save_pass_result(workdir: str, step: int, name: str, arrays: dict) -> None:
  """Saves a data pass's named arrays as ``step_<t>/<name>.npz`` (atomically, from process
  0; an after-step pass is saved before ``export_meta.json``, so a complete export always
  has its passes' results)."""
  if jax.process_index() == 0:
    storage.write_with(pass_result_path(workdir, step, name), lambda f: np.savez(
        f, **{key: np.asarray(value) for key, value in arrays.items()}))


def _corrupt_pass_result(workdir: str, step: int, path: str, reason: str):
  """The error for a pass result that cannot be read, with what to do about it."""
  if export_exists(workdir, step):  # a result saved with step t's finished export
    remedy = (f"it belongs to the finished export of step {step}: delete it and "
              f"{export_meta_path(workdir, step)}, and run again "
              f"to train step {step} again")
  else:  # a pass before step t: computed again when missing
    remedy = f"delete it and run again: step {step} computes it again"
  return errors.InputError(f"{path} is corrupt ({reason}); {remedy}")


def load_pass_result(workdir: str, step: int, name: str, missing_ok: bool = False):
  """The arrays of ``step_<t>/<name>.npz``; None when missing and ``missing_ok``; an
  ``errors.InputError`` naming the file when it is corrupt."""
  path = pass_result_path(workdir, step, name)
  if not storage.exists(path):
    if missing_ok:
      return None
    raise errors.MissingFileError(
        f"{path} is missing: this method reads the {name} of step {step}, which a run of "
        f"step {step} saves only when its method computes them (every step 0 does for "
        "prototypes); re-run that step with such a method, or start from another work dir")
  try:
    with np.load(io.BytesIO(storage.read_bytes(path))) as data:  # zip checks each CRC-32
      return {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError) as error:
    raise _corrupt_pass_result(workdir, step, path, f"{type(error).__name__}: "
                                                    f"{_first_line(error)}") from None


# --- evaluation results --------------------------------------------------------------------

def metrics_path(workdir: str, step: int) -> str:
  return storage.join(step_dir(workdir, step), "metrics.json")


def save_step_metrics(workdir: str, step: int, summary: dict) -> None:
  write_json(metrics_path(workdir, step), summary)

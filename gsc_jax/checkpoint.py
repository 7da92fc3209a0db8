"""All checkpoint reading and writing (orbax).

Work-dir layout of one run::

  <workdir>/config.json                  the resolved config
  <workdir>/run.lock                     while a run uses the work dir (gsc_jax/workdir.py)
  <workdir>/log.jsonl                    one JSON line per progress report / evaluation
  <workdir>/tensorboard/                 TensorBoard events (gsc_jax/tensorboard.py)
  <workdir>/results.csv, summary.json    per-step results; miou.png, their plot
  <workdir>/step_<t>/checkpoints/<it>/   train state + grain iterator state (exact resume)
  <workdir>/step_<t>/export/             params + batch stats at the end of step t
  <workdir>/step_<t>/prototypes.npz      GSC's class prototypes at the end of step t
  <workdir>/step_<t>/export_meta.json    written last: the export is complete
  <workdir>/step_<t>/entropy_thresholds.npz   PLOP's thresholds used while training step t
  <workdir>/step_<t>/metrics.json        evaluation after step t: the step is finished
  <workdir>/step_<t>/predictions.png     image | ground truth | prediction after step t
"""

import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from gsc_jax import atomic_files
from gsc_jax import errors


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), f"step_{step}")


def write_json(path: str, data) -> None:
  """Writes JSON atomically from process 0, so a kill never leaves half a file."""
  if jax.process_index() != 0:
    return

  def write(temporary):
    with open(temporary, "w") as f:
      json.dump(data, f, indent=2)

  atomic_files.write_atomically(path, write)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


# --- train state inside a step -------------------------------------------------------------

def train_manager(workdir: str, step: int) -> ocp.CheckpointManager:
  """Keeps the two newest train-state checkpoints of one incremental step."""
  directory = os.path.join(step_dir(workdir, step), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save_train_state(manager, iteration: int, state, data_iterator) -> None:
  manager.save(iteration, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iterator)))


def restore_train_state(manager, abstract_state, data_iterator):
  """Restores the newest checkpoint into ``abstract_state``'s shardings and the iterator."""
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data_iter=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"]


# --- the export handed to the next step ----------------------------------------------------

def export_exists(workdir: str, step: int) -> bool:
  return os.path.exists(os.path.join(step_dir(workdir, step), "export_meta.json"))


def save_export(workdir: str, step: int, variables, meta: dict) -> None:
  """Saves the end-of-step model (params, batch stats) and its metadata."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(step_dir(workdir, step), "export")
  checkpointer.save(path, variables, force=True)
  checkpointer.wait_until_finished()
  write_json(os.path.join(step_dir(workdir, step), "export_meta.json"), meta)


def pass_result_path(workdir: str, step: int, name: str) -> str:
  return os.path.join(step_dir(workdir, step), f"{name}.npz")


def save_pass_result(workdir: str, step: int, name: str, arrays: dict) -> None:
  """Saves a data pass's named arrays as ``step_<t>/<name>.npz`` (atomically, from process
  0; an after-step pass is saved before ``export_meta.json``, so a complete export always
  has its passes' results)."""
  if jax.process_index() != 0:
    return

  def write(temporary):
    with open(temporary, "wb") as f:  # a file object: np.savez would append ".npz" to a name
      np.savez(f, **{key: np.asarray(value) for key, value in arrays.items()})

  atomic_files.write_atomically(pass_result_path(workdir, step, name), write)


def load_pass_result(workdir: str, step: int, name: str, missing_ok: bool = False):
  """The arrays of ``step_<t>/<name>.npz``; None when missing and ``missing_ok``."""
  path = pass_result_path(workdir, step, name)
  if not os.path.exists(path):
    if missing_ok:
      return None
    raise errors.MissingFileError(
        f"{path} is missing: this method reads the {name} of step {step}, which a run of "
        f"step {step} saves only when its method computes them (every step 0 does for "
        "prototypes); re-run that step with such a method, or start from another work dir")
  with np.load(path) as data:
    return {key: data[key] for key in data.files}


def load_export(workdir: str, step: int, abstract_variables):
  """Loads step ``step``'s export into the shapes and shardings of ``abstract_variables``."""
  if not export_exists(workdir, step):
    raise errors.MissingFileError(
        f"no finished export of step {step} in {step_dir(workdir, step)}: run that step first")
  path = os.path.join(step_dir(workdir, step), "export")
  variables = ocp.StandardCheckpointer().restore(path, abstract_variables)
  meta = read_json(os.path.join(step_dir(workdir, step), "export_meta.json"))
  return variables, meta


def read_export_arrays(workdir: str, step: int):
  """Step ``step``'s exported variables as numpy arrays, on any device topology (for
  analysis and tests; training uses ``load_export``)."""
  path = os.path.join(step_dir(workdir, step), "export")
  checkpointer = ocp.StandardCheckpointer()
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                          checkpointer.metadata(path).item_metadata)
  return jax.tree.map(np.asarray, checkpointer.restore(path, abstract))


# --- evaluation results --------------------------------------------------------------------

def metrics_path(workdir: str, step: int) -> str:
  return os.path.join(step_dir(workdir, step), "metrics.json")


def save_step_metrics(workdir: str, step: int, summary: dict) -> None:
  write_json(metrics_path(workdir, step), summary)

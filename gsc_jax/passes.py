"""The method's passes over a step's training data, before and after the step.

A pass (``methods.base.DataPass``) runs its jitted per-batch function over every global
batch, gathers the results of every process on the host and reduces them with its
``finish``. Results are saved in ``step_<t>/<name>.npz``: a pass before a step is not
recomputed when the step resumes, and a pass after step t is read by step t+1.
"""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from gsc_jax import checkpoint


def _shown(value) -> str:
  """An array for the log: whole when small; a table of short rows (per-epoch thresholds)
  as its shape and first and last rows; otherwise its shape."""
  value = np.asarray(value)
  if value.size <= 64:
    return np.array2string(value, precision=4)
  if value.ndim == 2 and value.shape[1] <= 32:
    return (f"shape {value.shape}, first row {np.array2string(value[0], precision=4)}, "
            f"last row {np.array2string(value[-1], precision=4)}")
  return f"shape {value.shape}"


def run_pass(data_pass, variables, frozen, batches, previous=None) -> dict:
  """``data_pass.finish`` of its per-batch results over ``batches`` (global arrays)."""
  batch_statistics = jax.jit(data_pass.batch_statistics)
  results = [jax.tree.map(np.asarray, multihost_utils.process_allgather(
      batch_statistics(variables, frozen, batch), tiled=True)) for batch in batches]
  return data_pass.finish(results, previous)


def before_step(method, workdir: str, step: int, teacher_variables, frozen, batches_fn,
                log) -> dict:
  """The results of ``method.before_step`` (run with the teacher), from their files when
  an interrupted step resumes; ``batches_fn(augmented)`` gives the step's batches for one
  pass (``DataPass.augmented``)."""
  results = {}
  for data_pass in method.before_step:
    saved = checkpoint.load_pass_result(workdir, step, data_pass.name, missing_ok=True)
    if saved is None:
      start = time.time()
      saved = run_pass(data_pass, teacher_variables, frozen, batches_fn(data_pass.augmented))
      checkpoint.save_pass_result(workdir, step, data_pass.name, saved)
      log(f"step {step}: {data_pass.name} in {time.time() - start:.1f} s: "
          + "; ".join(f"{key} {_shown(value)}" for key, value in saved.items()))
    results.update(saved)
  return results


def from_previous_step(method, workdir: str, step: int) -> dict:
  """The saved results of step ``step - 1``'s after-step passes that this step reads."""
  results = {}
  for name in method.frozen_from_previous_step:
    results.update(checkpoint.load_pass_result(workdir, step - 1, name))
  return results


def after_step(method, workdir: str, step: int, variables, frozen, batches_fn, log) -> None:
  """Runs and saves ``method.after_step`` with the step's final variables."""
  for data_pass in method.after_step:
    start = time.time()
    previous = (checkpoint.load_pass_result(workdir, step - 1, data_pass.name, missing_ok=True)
                if step > 0 else None)
    result = run_pass(data_pass, variables, frozen, batches_fn(data_pass.augmented), previous)
    checkpoint.save_pass_result(workdir, step, data_pass.name, result)
    purpose = f" ({data_pass.purpose})" if data_pass.purpose else ""
    log(f"step {step}: {data_pass.name}{purpose} in {time.time() - start:.1f} s")

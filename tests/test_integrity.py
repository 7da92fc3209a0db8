"""Checksums on exports and train checkpoints: a damaged export is an error naming the file,
a damaged train checkpoint is set aside and the step resumes from the newest good one; a
corrupt JSON or .npz file of the work dir is an error naming it and saying what to do."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from gsc_jax import checkpoint
from gsc_jax import errors
from tests.test_run_control import _run

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

CORRUPT_BYTES = 4096


def _largest_file(directory) -> str:
  """The largest file under ``directory`` (one holding array data), but its checksums."""
  files = [os.path.join(root, name) for root, _, names in os.walk(directory)
           for name in names if name != checkpoint.CHECKSUMS_FILE]
  return max(files, key=os.path.getsize)


def _garble(path) -> None:
  """Inverts up to CORRUPT_BYTES bytes in the middle of ``path`` (its size unchanged)."""
  size = os.path.getsize(path)
  count = min(CORRUPT_BYTES, size)
  start = (size - count) // 2
  with open(path, "r+b") as f:
    f.seek(start)
    original = f.read(count)
    f.seek(start)
    f.write(bytes(byte ^ 0xFF for byte in original))


def _truncate(path) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def finished_step0(tmp_path_factory):
  """A work dir whose step 0 is trained, exported and evaluated."""
  workdir = tmp_path_factory.mktemp("step0")
  _run(workdir, ",last_step=0")
  return workdir


def test_a_garbled_export_is_refused_naming_the_file(finished_step0, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_step0, workdir)
  export = checkpoint.export_path(str(workdir), 0)
  damaged = _largest_file(export)
  _garble(damaged)
  message = (r"the export of step 0 is corrupt: checksum mismatch in " + re.escape(damaged)
             + r"; delete .*export_meta.json and run again")
  with pytest.raises(errors.InputError, match=message):  # step 1 would train from it
    _run(workdir)
  assert not checkpoint.export_exists(str(workdir), 1)
  os.remove(checkpoint.metrics_path(str(workdir), 0))
  with pytest.raises(errors.InputError, match=message):  # nor is it evaluated again
    _run(workdir, ",last_step=0")
  assert not os.path.exists(checkpoint.metrics_path(str(workdir), 0))
  with pytest.raises(errors.InputError, match=message):
    checkpoint.read_export_arrays(str(workdir), 0)


def test_the_intact_export_passes_its_checksums(finished_step0):
  export = checkpoint.export_path(str(finished_step0), 0)
  assert checkpoint.checksum_problem(export) is None
  with open(os.path.join(export, checkpoint.CHECKSUMS_FILE)) as f:
    listed = json.load(f)["files"]
  assert os.path.relpath(_largest_file(export), export) in listed
  meta = checkpoint.read_json(os.path.join(checkpoint.step_dir(str(finished_step0), 0),
                                           "export_meta.json"))
  assert meta["checksums"] == checkpoint.CHECKSUMS_FILE


def test_a_damaged_train_checkpoint_falls_back_to_the_newest_good_one(tmp_path, capsys):
  """A checkpoint every 4 iterations: a run of step 0 killed at iteration 9 leaves
  checkpoints 4 and 8. Garbled 8 is set aside and the step resumes from 4; truncated 4
  then leaves no good checkpoint, and the step starts from its beginning."""
  with pytest.raises(errors.RunStopped):
    _run(tmp_path, ",last_step=0,stop_after_iterations=9")
  manager = checkpoint.train_manager(str(tmp_path), 0)
  assert manager.all_steps() == [4, 8]
  garbled = _largest_file(manager.path(8))
  _garble(garbled)
  capsys.readouterr()
  with pytest.raises(errors.RunStopped, match="at step 0 iteration 5"):
    _run(tmp_path, ",last_step=0,stop_after_iterations=1")
  out = capsys.readouterr().out
  assert (f"step_0/checkpoints/8: checksum mismatch in "
          f"{os.path.relpath(garbled, manager.path(8))} (moved to "
          f"step_0/{checkpoint.REJECTED_DIR}/8); falling back to iteration 4") in out
  assert "step 0: resumed from iteration 4" in out
  with open(tmp_path / "log.jsonl") as f:  # the history after iteration 4 is trained again
    restarts = [json.loads(line)["restart"] for line in f if '"restart"' in line]
  assert (restarts[-1]["step"], restarts[-1]["iteration"]) == (0, 4)
  assert os.path.isdir(os.path.join(checkpoint.step_dir(str(tmp_path), 0),
                                    checkpoint.REJECTED_DIR, "8"))
  manager = checkpoint.train_manager(str(tmp_path), 0)
  assert manager.all_steps() == [4]
  _truncate(_largest_file(manager.path(4)))
  with pytest.raises(errors.RunStopped, match="at step 0 iteration 1"):
    _run(tmp_path, ",last_step=0,stop_after_iterations=1")
  out = capsys.readouterr().out
  assert re.search(r"step_0/checkpoints/4: \S+ has \d+ bytes instead of \d+ \(moved to "
                   r"step_0/rejected_checkpoints/4\); no good checkpoint is left: step 0 "
                   r"starts from its beginning", out), out
  assert "resumed from" not in out


def test_a_checkpoint_without_checksums_is_not_used(tmp_path):
  """A save that was never completed (no checksums.json) counts as damaged."""
  directory = tmp_path / "checkpoint"
  directory.mkdir()
  (directory / "data").write_bytes(b"0123456789")
  assert "no checksums.json" in checkpoint.checksum_problem(str(directory))
  checkpoint.write_checksums(str(directory))
  assert checkpoint.checksum_problem(str(directory)) is None
  (directory / "data").write_bytes(b"0123456780")
  assert checkpoint.checksum_problem(str(directory)) == "checksum mismatch in data"
  (directory / "data").unlink()
  assert checkpoint.checksum_problem(str(directory)) == "data is missing"


@pytest.mark.parametrize("name, remedy", [
    ("metrics.json", "the step's export is evaluated again"),
    ("export_meta.json", "the step is trained again"),
    ("config.json", "it is written again"),
])
def test_a_corrupt_json_file_is_an_error_naming_it(tmp_path, name, remedy):
  path = tmp_path / "step_0" / name
  path.parent.mkdir()
  path.write_bytes(b'{"all": 0.5, "iou": {"0"\x00\xff')
  with pytest.raises(errors.InputError,
                     match=rf"{re.escape(str(path))} is corrupt \(not valid JSON.*{remedy}"):
    checkpoint.read_json(str(path))


@pytest.mark.parametrize("damage", [_garble, _truncate])
def test_a_corrupt_pass_result_is_an_error_naming_it(tmp_path, damage):
  arrays = {"thresholds": np.linspace(0.0, 1.0, 4096).reshape(64, 64)}
  checkpoint.save_pass_result(str(tmp_path), 1, "entropy_thresholds", arrays)
  path = checkpoint.pass_result_path(str(tmp_path), 1, "entropy_thresholds")
  damage(path)
  with pytest.raises(errors.InputError, match=rf"{re.escape(path)} is corrupt \(.*\); delete "
                                              r"it and run again: step 1 computes it again"):
    checkpoint.load_pass_result(str(tmp_path), 1, "entropy_thresholds")
  # The same file next to a finished export belongs to it: the step is trained again.
  checkpoint.write_json(os.path.join(checkpoint.step_dir(str(tmp_path), 1),
                                     "export_meta.json"), {})
  with pytest.raises(errors.InputError, match=r"belongs to the finished export of step 1"):
    checkpoint.load_pass_result(str(tmp_path), 1, "entropy_thresholds")

"""What a resumed run leaves behind: a strict-JSON log whose final history holds each
iteration once, no train checkpoints of finished steps, and a split cache whose corrupt
files are named and computed again."""

import json
import os

import numpy as np
import pytest

from gsc_jax import checkpoint
from gsc_jax import errors
from gsc_jax import reporting
from gsc_jax import tasks
from gsc_jax.data import splits
from tests import test_run_control as run_control
from tests import test_splits as split_tests

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"


def _refuse_constant(name):
  raise ValueError(f"not strict JSON: {name}")


def _strict_lines(workdir) -> list[dict]:
  """Every line of ``log.jsonl``, parsed as strict JSON (a bare NaN/Infinity raises)."""
  with open(os.path.join(str(workdir), reporting.LOG_FILE)) as f:
    return [json.loads(line, parse_constant=_refuse_constant) for line in f]


def test_non_finite_values_are_logged_as_null(tmp_path):
  reporting.append_jsonl(str(tmp_path), {"step": 0, "iteration": 1, "loss": float("nan"),
                                         "weight_max": [1.0, float("inf")],
                                         "eval": {"iou": {"3": float("-inf")}}})
  (record,) = _strict_lines(tmp_path)
  assert record["loss"] is None and record["weight_max"] == [1.0, None]
  assert record["eval"]["iou"]["3"] is None


def _progress(step, iteration):
  return {"step": step, "iteration": iteration, "loss": float(iteration)}


def test_the_final_history_drops_what_a_restart_re_runs(tmp_path, capsys):
  """Step 0 reported up to iteration 5, was killed, resumed from its checkpoint of
  iteration 4 and reported 5 and 6 again; step 1 was evaluated, killed before its
  metrics.json and evaluated again. A line cut short by the kill is skipped with a note."""
  workdir = str(tmp_path)
  reporting.append_restart(workdir, 0, 0)
  for iteration in range(1, 6):
    reporting.append_jsonl(workdir, _progress(0, iteration))
  with open(tmp_path / reporting.LOG_FILE, "a") as f:
    f.write('{"step": 0, "iteration": 6, "lo')  # killed mid-write
  reporting.append_restart(workdir, 0, 4)
  for iteration in (5, 6):
    reporting.append_jsonl(workdir, {**_progress(0, iteration), "again": True})
  reporting.append_jsonl(workdir, {"step": 0, "eval": {"all": 0.5}})
  reporting.append_jsonl(workdir, _progress(1, 1))
  reporting.append_jsonl(workdir, {"step": 1, "eval": {"all": 0.1}})
  reporting.append_restart(workdir, 1, None)
  reporting.append_jsonl(workdir, {"step": 1, "eval": {"all": 0.2}})

  history = reporting.read_log(workdir)
  assert f"{tmp_path / reporting.LOG_FILE}: skipped line(s) 7" in capsys.readouterr().err
  progress = [(r["step"], r["iteration"]) for r in history if "loss" in r]
  assert progress == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (1, 1)]
  assert all(r.get("again") for r in history if r.get("iteration") in (5, 6))
  assert [(r["step"], r["eval"]["all"]) for r in history if "eval" in r] == [(0, 0.5),
                                                                            (1, 0.2)]
  restarts = [r["restart"] for r in history if "restart" in r]
  assert [(r["step"], r["iteration"]) for r in restarts] == [(0, 0), (0, 4), (1, None)]


def test_readers_without_restart_records_keep_the_last_record(tmp_path):
  """A log written before restart records existed: the record written last of each
  iteration is kept."""
  for record in (_progress(0, 1), _progress(0, 2), {**_progress(0, 2), "loss": 9.0}):
    reporting.append_jsonl(str(tmp_path), record)
  history = reporting.read_log(str(tmp_path))
  assert [(r["iteration"], r["loss"]) for r in history] == [(1, 1.0), (2, 9.0)]


def _killed_during_clean_up(workdir, step):
  raise errors.RunStopped(f"killed after step {step}'s metrics.json")


def test_a_resumed_run_logs_each_iteration_once_and_removes_leftover_checkpoints(
    tmp_path, monkeypatch, capsys):
  """Step 0 (10 iterations, a checkpoint every 4) is killed after iteration 6, resumed
  from iteration 4 and killed again between its metrics.json and the removal of its train
  checkpoints; the next start removes them."""
  with pytest.raises(errors.RunStopped):
    run_control._run(tmp_path, ",last_step=0,stop_after_iterations=6")
  monkeypatch.setattr(checkpoint, "remove_train_checkpoints", _killed_during_clean_up)
  with pytest.raises(errors.RunStopped, match="metrics.json"):
    run_control._run(tmp_path, ",last_step=0")
  monkeypatch.undo()
  checkpoints = os.path.join(checkpoint.step_dir(str(tmp_path), 0), "checkpoints")
  assert os.path.exists(checkpoint.metrics_path(str(tmp_path), 0)) and os.listdir(checkpoints)

  lines = _strict_lines(tmp_path)
  assert [line["restart"]["iteration"] for line in lines if "restart" in line] == [0, 4]
  assert [line.get("iteration") for line in lines].count(5) == 2  # reported by both runs
  history = reporting.read_log(str(tmp_path))
  assert [r["iteration"] for r in history if "loss" in r] == list(range(1, 11))
  assert len([r for r in history if "eval" in r]) == 1

  capsys.readouterr()
  run_control._run(tmp_path, ",last_step=0")
  output = capsys.readouterr().out
  assert "removed the train checkpoints left behind by finished step(s) 0" in output
  assert not os.path.exists(checkpoints)
  assert not any("restart" in line for line in _strict_lines(tmp_path)[len(lines):])


def _lists(tmp_path, source):
  return splits.StepLists(split_tests._config(tmp_path), tasks.get_task("voc", "15-1"),
                          source, None)


def test_a_garbled_cached_list_is_named_and_computed_again(tmp_path, capsys):
  expected = _lists(tmp_path, split_tests.FakeSource(split_tests.TRAIN)).train(1)
  path = (tmp_path / "cache" / "voc" / "train-0000000000000001"
          / "train_15-1_natural_ov_step1.json")
  path.write_text(path.read_text()[:40])
  np.testing.assert_array_equal(
      _lists(tmp_path, split_tests.FakeSource(split_tests.TRAIN)).train(1), expected)
  assert f"the split cache file {path} is corrupt" in capsys.readouterr().err
  assert json.loads(path.read_text())["indices"] == expected.tolist()  # rewritten


def test_a_garbled_label_scan_is_named_and_scanned_again(tmp_path, capsys):
  _lists(tmp_path, split_tests.FakeSource(split_tests.TRAIN)).train(1)
  path = tmp_path / "cache" / "voc" / "train-0000000000000001" / "label_classes.npz"
  path.write_bytes(path.read_bytes()[:60])
  source = split_tests.FakeSource(split_tests.TRAIN)
  np.testing.assert_array_equal(_lists(tmp_path, source).train(2), [3])  # a new step
  assert f"the split cache file {path} is corrupt" in capsys.readouterr().err
  assert source.reads == len(split_tests.TRAIN)  # scanned again
  with np.load(path) as rewritten:
    assert len(rewritten["offsets"]) == len(split_tests.TRAIN) + 1


def test_benchmark_diagnostics_count_re_run_iterations_once(tmp_path):
  """Iteration 2 of step 1, reported before a kill and again after the resume from
  iteration 1, counts once (the later value); a non-finite nu (null) is left out."""
  from gsc_jax.tools import benchmark
  workdir = str(tmp_path)
  reporting.append_restart(workdir, 1, 0)
  reporting.append_jsonl(workdir, {**_progress(1, 1), "nu": 0.2})
  reporting.append_jsonl(workdir, {**_progress(1, 2), "nu": 1.0})
  reporting.append_restart(workdir, 1, 1)
  reporting.append_jsonl(workdir, {**_progress(1, 2), "nu": 0.6})
  reporting.append_jsonl(workdir, {**_progress(1, 3), "nu": float("nan")})
  found = benchmark.run_diagnostics(os.path.join(workdir, reporting.LOG_FILE))
  assert found == pytest.approx({"nu": 0.4})

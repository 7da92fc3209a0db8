"""Confusion matrix, IoU, per-step summaries and results files (docs/algorithm.md 1.8)."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import metrics
from gsc_jax import tasks

LABELS = np.array([[0, 0, 1, 1, -1],
                   [2, 2, 255, 7, 1]])
PREDICTIONS = np.array([[0, 1, 1, 1, 0],
                        [2, 0, 2, 2, 1]])
# Counted by hand: the 255, 7 (>= K) and -1 pixels are skipped.
EXPECTED_CONFUSION = np.array([[1, 1, 0],
                               [0, 3, 0],
                               [1, 0, 1]])


def test_confusion_matrix_by_hand():
  confusion = metrics.confusion_matrix(LABELS, PREDICTIONS, 3)
  assert confusion.dtype == jnp.int32
  np.testing.assert_array_equal(confusion, EXPECTED_CONFUSION)


def test_confusion_matrix_under_jit():
  jitted = jax.jit(metrics.confusion_matrix, static_argnums=2)
  np.testing.assert_array_equal(
      jitted(jnp.asarray(LABELS), jnp.asarray(PREDICTIONS), 3), EXPECTED_CONFUSION)


def test_class_iou_formula():
  iou = metrics.class_iou(EXPECTED_CONFUSION)
  assert iou.dtype == np.float64
  # class 0: TP 1, FP 1 (row 2), FN 1; class 1: TP 3, FP 1; class 2: TP 1, FN 1
  np.testing.assert_allclose(iou, [1 / (3 + 1e-6), 3 / (4 + 1e-6), 1 / (2 + 1e-6)])


def test_mean_iou_skips_classes_without_ground_truth():
  confusion = np.array([[2, 0, 1],
                        [0, 0, 0],   # class 1: no ground truth (a false positive only)
                        [0, 1, 1]])
  iou = metrics.class_iou(confusion)
  assert iou[1] == 0.0
  expected = (2 / (3 + 1e-6) + 1 / (3 + 1e-6)) / 2
  assert metrics.mean_iou(confusion) == pytest.approx(expected)
  assert metrics.mean_iou(np.zeros((3, 3))) is None


def test_summarize_step_old_new_by_hand():
  task = tasks.get_task("synthetic", "2-1", num_classes=5)   # {0,1,2}, {3}, {4}
  confusion = np.diag([10, 10, 0, 10])  # step 1: channels 0..3; class 2 has no GT
  confusion[0, 1] = 10  # class 0: IoU 10/20; class 1: TP 10, FP 10 -> 10/20
  summary = metrics.summarize_step(confusion, task, 1)
  assert summary["step"] == 1
  assert summary["iou"][0] == pytest.approx(0.5)
  assert summary["iou"][1] == pytest.approx(0.5)
  assert summary["iou"][2] is None           # seen, no ground truth
  assert summary["iou"][3] == pytest.approx(1.0)
  assert summary["iou"][4] is None           # not seen yet
  assert summary["old"] == pytest.approx(0.5)
  assert summary["new"] == pytest.approx(1.0)
  assert summary["all"] == pytest.approx(2 / 3)
  assert summary["groups"] == {"0-2": pytest.approx(0.5), "3": pytest.approx(1.0)}
  step0 = metrics.summarize_step(np.diag([5, 5, 5]), task, 0)
  assert step0["new"] is None and step0["old"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="3 channels"):
    metrics.summarize_step(np.eye(4), task, 0)


def test_summarize_step_maps_channels_to_classes():
  task = tasks.get_task("synthetic", "2-1", num_classes=5, class_order=[4, 1, 3, 2])
  # channels at step 1: classes [0, 4, 1, 3]; channel 1 (class 4) is the only wrong one
  confusion = np.diag([10, 0, 10, 10])
  confusion[1, 0] = 10
  summary = metrics.summarize_step(confusion, task, 1)
  assert summary["iou"][4] == 0.0 and summary["iou"][3] == pytest.approx(1.0)
  assert summary["iou"][2] is None
  assert summary["old"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
  assert set(summary["groups"]) == {"0,4,1", "3"}


def test_group_label():
  assert metrics.group_label(range(16)) == "0-15"
  assert metrics.group_label([16]) == "16"
  assert metrics.group_label([101, 102, 103]) == "101-103"
  assert metrics.group_label([0, 4, 1]) == "0,4,1"
  assert metrics.group_label([]) == "none"


def _summaries():
  """Hand-written summaries of task 2-1 over 5 classes: {0,1,2}, {3}, {4}."""
  task = tasks.get_task("synthetic", "2-1", num_classes=5)
  return task, [
      {"step": 0, "iou": {0: 0.8, 1: 0.6, 2: 0.4, 3: None, 4: None},
       "all": 0.6, "old": 0.6, "new": None, "groups": {"0-2": 0.6}},
      {"step": 1, "iou": {0: 0.8, 1: 0.6, 2: None, 3: 0.5, 4: None},
       "all": 1.9 / 3, "old": 0.7, "new": 0.5, "groups": {"0-2": 0.7, "3": 0.5}},
      {"step": 2, "iou": {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.2},
       "all": 0.44, "old": 0.5, "new": 0.35, "groups": {"0-2": 0.5, "3": 0.5, "4": 0.2}},
  ]


def test_results_csv(tmp_path):
  task, summaries = _summaries()
  path = tmp_path / "out" / "results.csv"
  metrics.write_results_csv(str(path), task, summaries)
  rows = list(csv.reader(open(path)))
  assert rows[0] == ["step", "all (%)", "old (%)", "new (%)", "IoU 0 (%)", "IoU 1 (%)",
                     "IoU 2 (%)", "IoU 3 (%)", "IoU 4 (%)", "evaluation"]
  assert rows[1][:4] == ["0", "60.00", "60.00", ""]
  assert rows[2][:5] == ["1", "63.33", "70.00", "50.00", "80.00"]
  assert rows[1][7:9] == ["", ""]    # classes 3 and 4 unseen at step 0
  assert rows[2][6] == ""            # class 2 seen but without ground truth
  assert rows[2][8] == ""            # class 4 unseen at step 1
  assert rows[3][4:9] == ["50.00", "50.00", "50.00", "50.00", "20.00"]
  assert len(rows) == 4


def _two_step_results_csv(tmp_path):
  """results.csv of task 2-1 over 4 classes ({0,1,2} then {3}), steps 0 and 1."""
  task = tasks.get_task("synthetic", "2-1", num_classes=4)
  summaries = [
      {"step": 0, "iou": {0: 0.8, 1: 0.6, 2: 0.4, 3: 0.1}, "all": 0.6, "old": 0.6,
       "new": None},
      {"step": 1, "iou": {0: 0.7, 1: None, 2: 0.3, 3: 0.5}, "all": 0.5, "old": 0.5,
       "new": 0.5},
  ]
  path = tmp_path / "results.csv"
  metrics.write_results_csv(str(path), task, summaries)
  return path


def test_results_csv_value_columns_are_numbers_or_empty(tmp_path):
  with open(_two_step_results_csv(tmp_path), newline="") as file:
    rows = list(csv.DictReader(file))
  assert len(rows) == 2
  for row in rows:
    for column in ["step", "all (%)", "old (%)", "new (%)"] + [f"IoU {c} (%)" for c in range(4)]:
      if row[column] != "":
        float(row[column])  # raises on any text cell
  # Class 3 is unseen at step 0 (even with an IoU in the summary), class 1 has no pixels
  # at step 1, "new" does not exist at step 0: all three are empty.
  assert [rows[0]["IoU 3 (%)"], rows[1]["IoU 1 (%)"], rows[0]["new (%)"]] == ["", "", ""]
  assert rows[1]["IoU 3 (%)"] == "50.00"


def test_results_csv_loads_in_pandas_with_numeric_columns(tmp_path):
  pandas = pytest.importorskip("pandas")
  frame = pandas.read_csv(_two_step_results_csv(tmp_path))
  value_columns = ["all (%)", "old (%)", "new (%)"] + [f"IoU {c} (%)" for c in range(4)]
  assert all(pandas.api.types.is_float_dtype(frame[c]) for c in value_columns)
  assert frame["IoU 3 (%)"].isna().tolist() == [True, False]
  assert frame["IoU 0 (%)"].mean() == pytest.approx(75.0)


def test_results_csv_after_json_round_trip(tmp_path):
  task, summaries = _summaries()
  reloaded = json.loads(json.dumps(summaries))  # int class keys become strings
  metrics.write_results_csv(str(tmp_path / "a.csv"), task, summaries)
  metrics.write_results_csv(str(tmp_path / "b.csv"), task, reloaded)
  assert open(tmp_path / "a.csv").read() == open(tmp_path / "b.csv").read()


def test_summary_json(tmp_path):
  task, summaries = _summaries()
  path = tmp_path / "summary.json"
  metrics.write_summary_json(str(path), task, summaries)
  result = json.load(open(path))
  assert result["miou_unit"] == "percent"
  expected_avg = 100 * np.mean([s["all"] for s in summaries])
  assert result["avg"] == pytest.approx(expected_avg)
  assert result["all"] == pytest.approx(100 * summaries[-1]["all"])
  assert result["old"] == pytest.approx(50.0)
  assert result["new"] == pytest.approx(35.0)
  assert result["groups"] == pytest.approx({"0-2": 50.0, "3": 50.0, "4": 20.0})
  assert result["per_step"][1]["iou"]["3"] == pytest.approx(50.0)
  assert result["per_step"][0]["new"] is None
  assert result["task"] == "2-1" and result["num_steps_evaluated"] == 3
  assert len(result["per_step"]) == 3


def test_read_summary_json_gives_fractions_from_percent_and_from_old_files(tmp_path):
  """The reader returns the code's unit (fractions) from a percent file and from a file
  written before the unit was recorded (fractions, no "miou_unit")."""
  task, summaries = _summaries()
  path = tmp_path / "summary.json"
  metrics.write_summary_json(str(path), task, summaries)
  read = metrics.read_summary_json(str(path))
  assert "miou_unit" not in read
  assert read["all"] == pytest.approx(summaries[-1]["all"])
  assert read["avg"] == pytest.approx(np.mean([s["all"] for s in summaries]))
  assert read["per_step"][2]["iou"]["4"] == pytest.approx(0.2)
  old_file = tmp_path / "old_summary.json"
  old_file.write_text(json.dumps({"all": 0.44, "avg": 0.5, "per_step": summaries}))
  old = metrics.read_summary_json(str(old_file))
  assert old["all"] == 0.44 and old["avg"] == 0.5


def test_format_table():
  task, summaries = _summaries()
  table = metrics.format_table(task, summaries)
  lines = table.splitlines()
  assert lines[1].split() == ["step", "all", "old", "new", "0-2", "3", "4"]
  assert lines[2].split() == ["0", "60.0", "60.0", "-", "60.0", "-", "-"]
  assert lines[4].split() == ["2", "44.0", "50.0", "35.0", "50.0", "50.0", "20.0"]
  avg = 100 * np.mean([s["all"] for s in summaries])
  assert lines[-1].split() == ["avg", f"{avg:.1f}"]


def test_evaluation_protocol_states_every_switch():
  import ml_collections
  data = ml_collections.ConfigDict({"eval_mode": "center_crop", "eval_size": 512,
                                    "eval_ignore_background": False, "eval_unseen": "ignore"})
  assert metrics.evaluation_protocol(data) == (
      "shorter side resized to 512, centre crop 512x512; class 0 scored; "
      "classes not seen yet ignored")
  data.eval_unseen, data.eval_ignore_background = "background", True
  assert metrics.evaluation_protocol(data).endswith(
      "class 0 ignored; classes not seen yet scored as background")

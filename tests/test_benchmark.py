"""The benchmark runner's plan, table and README update (no training: see test_train.py)."""

import os
import types

from PIL import Image

import pytest

from gsc_jax.tools import benchmark

MODULE = types.SimpleNamespace(
    SEEDS=(0, 1), STEP0_METHOD="ft",
    RUNS={"15-1": (("FT", "method=ft"), ("GSC w/o prototypes", "method=gsc,gsc.prototypes=false")),
          "offline": (("Joint (offline)", "method=ft"),)})


def test_plan_shares_one_step0_per_task_and_seed():
  runs = benchmark.plan(MODULE, [0, 1])
  step0_runs = [run for run in runs if run[1] is None]
  assert [(task, seed) for task, _, seed, *_ in step0_runs] == [("15-1", 0), ("15-1", 1)]
  assert step0_runs[0][3] == "15-1,method=ft,seed=0,last_step=0"
  gsc = next(run for run in runs if run[1] == "GSC w/o prototypes" and run[2] == 1)
  assert gsc[3] == "15-1,method=gsc,gsc.prototypes=false,seed=1"
  assert gsc[4] == "15-1/seed1/gsc_w_o_prototypes" and gsc[5] == "15-1/seed1/step0"
  joint = [run for run in runs if run[0] == "offline"]
  assert len(joint) == 2 and all(run[5] is None for run in joint)
  # Every step 0 comes before the runs that reuse it.
  for index, run in enumerate(runs):
    if run[5] is not None:
      assert any(other[4] == run[5] for other in runs[:index])


def test_table_means_spreads_and_missing_seeds():
  summary = lambda old, new, all_, avg: {"old": old, "new": new, "all": all_, "avg": avg}
  results = {("15-1", "FT", 0): (summary(0.1, 0.2, 0.12, 0.3), 60.0),
             ("15-1", "FT", 1): (summary(0.3, 0.4, 0.32, 0.5), 120.0),
             ("offline", "Joint (offline)", 0): (summary(0.7, None, 0.7, 0.7), 30.0)}
  markdown = benchmark.table(MODULE, results, [0, 1])
  assert "| FT | 20.0 ± 10.0 | 30.0 ± 10.0 | 22.0 ± 10.0 | 40.0 ± 10.0 | 2/2 | 1.5 |" in markdown
  assert "| GSC w/o prototypes | - | - | - | - | 0/2 | nan |" in markdown
  assert "| Joint (offline) | 70.0 | - | 70.0 | 70.0 | 1/2 | 0.5 |" in markdown


def test_replace_between_markers(tmp_path):
  path = tmp_path / "README.md"
  path.write_text(f"intro\n{benchmark.README_START}\nold\n{benchmark.README_END}\nrest\n")
  benchmark.replace_between_markers(str(path), "new table")
  assert path.read_text() == (f"intro\n{benchmark.README_START}\nnew table\n"
                              f"{benchmark.README_END}\nrest\n")
  path.write_text("no markers")
  with pytest.raises(ValueError, match="markers"):
    benchmark.replace_between_markers(str(path), "x")


def test_mean_step_summaries_and_method_plot(tmp_path):
  step = lambda t, all_, old, new: {"step": t, "all": all_, "old": old, "new": new}
  seed0 = {"per_step": [step(0, 0.6, 0.6, None), step(1, 0.4, 0.5, 0.1)]}
  seed1 = {"per_step": [step(0, 0.8, 0.8, None), step(1, 0.2, 0.3, 0.3)]}
  mean = benchmark.mean_step_summaries([seed0, seed1])
  assert [s["step"] for s in mean] == [0, 1]
  assert mean[0]["new"] is None
  assert abs(mean[1]["all"] - 0.3) < 1e-12 and abs(mean[1]["new"] - 0.2) < 1e-12
  results = {("15-1", "FT", 0): (seed0, 1.0), ("15-1", "FT", 1): (seed1, 1.0)}
  paths = benchmark.plot_methods(MODULE, results, [0, 1], str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["15_1.png"]  # offline: no result yet
  with Image.open(paths[0]) as image:
    assert image.size[0] > 100 and image.size[1] > 100


def test_ordering_verdict_per_seed():
  module = types.SimpleNamespace(**vars(MODULE), ORDERING=("15-1", ("FT", "GSC w/o prototypes")))
  final = lambda all_: ({"all": all_}, 1.0)
  results = {("15-1", "FT", 0): final(0.1), ("15-1", "GSC w/o prototypes", 0): final(0.3),
             ("15-1", "FT", 1): final(0.4), ("15-1", "GSC w/o prototypes", 1): final(0.2)}
  verdict = benchmark.ordering_verdict(module, results, [0, 1, 2])
  assert "- seed 0: holds (FT 10.0, GSC w/o prototypes 30.0)" in verdict
  assert "- seed 1: inverted: FT >= GSC w/o prototypes (FT 40.0" in verdict
  assert "- seed 2: not every run has finished" in verdict
  assert benchmark.ordering_verdict(MODULE, results, [0]) == ""  # no ORDERING: no line


def test_diagnostics_from_log(tmp_path):
  """Means over the incremental steps' progress records (step 0 and evaluations skipped)."""
  import json
  run_dir = tmp_path / "gsc"
  run_dir.mkdir()
  records = [{"step": 0, "iteration": 1, "loss": 1.0},
             {"step": 1, "iteration": 1, "loss": 1.0, "nu": 0.4, "weight_mean": [1.0, 1.0],
              "weight_max": [3.0, 1.0], "gradient_share": [0.7, 0.3]},
             {"step": 2, "iteration": 1, "loss": 1.0, "nu": 0.6,
              "weight_mean": [1.0, 2.0, 1.0], "weight_max": [5.0, 2.0, 1.0],
              "gradient_share": [0.5, 0.4, 0.1]},
             {"step": 2, "eval": {"all": 0.5}}]
  (run_dir / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  found = benchmark.run_diagnostics(str(run_dir / "log.jsonl"))
  assert found == pytest.approx({"nu": 0.5, "old_weight_mean": 1.25, "weight_max": 5.0,
                                 "new_gradient_share": 0.2})
  markdown = benchmark.diagnostics_table(MODULE, {("15-1", "FT", 0): str(run_dir)}, [0])
  assert "| FT | 0.50 | 1.25 | 5.00 | 0.20 |" in markdown

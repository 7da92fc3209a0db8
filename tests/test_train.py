"""End to end: a short two-step task on tiny synthetic data, and exact resume."""

import csv
import json
import os
import re

import jax
import numpy as np
import pytest

from configs import synthetic
from gsc_jax import checkpoint
from gsc_jax import errors
from gsc_jax import tensorboard
from gsc_jax import train
from gsc_jax.methods import gsc
from gsc_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

# Step 0 = background + classes 1-3, step 1 = class 4.
TINY = ("3-1,data.num_classes=5,data.image_size=64,data.crop_size=64,data.eval_size=64,"
        "data.num_train_images=48,data.num_val_images=16,data.eval_batch_size=8,"
        "model.backbone=resnet_tiny,model.head_channels=16,optim.batch_size=8,"
        "optim.epochs_step0=1,optim.epochs_incremental=2,log_every=2,checkpoint_every=2")


def tiny_config(extra: str = ""):
  return synthetic.get_config(TINY + extra)


def run(workdir, extra=""):
  config = tiny_config(extra)
  workdir = workdir_lib.prepare(config, str(workdir))
  return train.train_and_evaluate(config, workdir)


def read_export(workdir, step):
  return checkpoint.read_export_arrays(str(workdir), step)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  summaries = run(workdir, ",method=mib")
  return workdir, summaries


def test_two_step_run_writes_results(finished_run):
  workdir, summaries = finished_run
  assert [s["step"] for s in summaries] == [0, 1]
  for summary in summaries:
    assert 0.0 <= summary["all"] <= 1.0
  assert summaries[0]["new"] is None and summaries[1]["new"] is not None
  with open(workdir / "results.csv") as f:
    rows = list(csv.reader(f))
  assert len(rows) == 3  # header + one row per step
  header = rows[0]
  class4 = header.index("IoU 4 (%)")
  assert rows[1][class4] == ""  # class 4 unseen at step 0
  assert rows[0][:4] == ["step", "all (%)", "old (%)", "new (%)"]
  assert np.isclose(float(rows[2][1]), 100 * summaries[1]["all"], atol=0.005)  # 2 decimals
  summary = json.load(open(workdir / "summary.json"))
  assert summary["miou_unit"] == "percent"
  assert np.isclose(summary["avg"], 100 * np.mean([s["all"] for s in summaries]))
  log_lines = [json.loads(line) for line in open(workdir / "log.jsonl")]
  assert any("images_per_second" in line for line in log_lines)
  # The train checkpoints of a finished step are removed; its export stays.
  assert not os.path.exists(os.path.join(checkpoint.step_dir(str(workdir), 0), "checkpoints"))


def test_step1_grew_the_classifier_from_step0(finished_run):
  workdir, _ = finished_run
  step0, step1 = read_export(workdir, 0), read_export(workdir, 1)
  assert step0["params"]["classifier_0"]["kernel"].shape[-1] == 4
  assert step1["params"]["classifier_1"]["kernel"].shape[-1] == 1


def test_finished_steps_are_not_rerun(finished_run, capsys):
  workdir, summaries = finished_run
  events_before = tensorboard.event_files(os.path.join(workdir, tensorboard.SUBDIR))
  again = run(workdir, ",method=mib")
  output = capsys.readouterr().out
  assert "finished earlier, skipping" in output
  assert again == summaries
  # Nothing was trained or evaluated: no new TensorBoard file.
  assert tensorboard.event_files(os.path.join(workdir, tensorboard.SUBDIR)) == events_before
  # The run ends by naming its result files and the TensorBoard command.
  for name in ("results.csv", "summary.json", "miou.png", "predictions.png",
               "tensorboard --logdir"):
    assert name in output


def test_resume_after_interruption_is_bitwise_identical(finished_run, tmp_path, capsys):
  """Killed twice and resumed: the exports and summaries equal the uninterrupted run's, bit
  for bit, also where the resumed steps read their train step from the compilation cache
  (tests/conftest.py: one cache for the session)."""
  reference_dir, reference = finished_run
  workdir = tmp_path / "interrupted"
  # 48 images / batch 8 = 6 iterations at step 0; checkpoints every 2.
  with pytest.raises(errors.RunStopped):
    run(workdir, ",method=mib,stop_after_iterations=3")  # killed in step 0
  with pytest.raises(errors.RunStopped):
    run(workdir, ",method=mib,stop_after_iterations=7")  # finishes step 0, killed in step 1
  assert checkpoint.export_exists(str(workdir), 0) and not checkpoint.export_exists(str(workdir), 1)
  assert os.listdir(os.path.join(checkpoint.step_dir(str(workdir), 1), "checkpoints"))
  capsys.readouterr()
  summaries = run(workdir, ",method=mib")
  # "partly": a small program of the first call may compile under the cache's 0.5 s
  # threshold (tests/conftest.py), which depends on the machine's load; "reused": an
  # earlier test of this session compiled the same program in this process.
  assert re.search(r"step 1: train step ((partly )?read from the compilation cache|reused "
                   r"from this process)", capsys.readouterr().out)
  for step in (0, 1):
    resumed, uninterrupted = read_export(workdir, step), read_export(reference_dir, step)
    flat_resumed = jax.tree.leaves(resumed)
    flat_reference = jax.tree.leaves(uninterrupted)
    assert len(flat_resumed) == len(flat_reference)
    for a, b in zip(flat_resumed, flat_reference):
      np.testing.assert_array_equal(a, b)
  assert summaries == reference


def test_init_step0_from_another_workdir(finished_run, tmp_path):
  reference_dir, reference = finished_run
  summaries = run(tmp_path / "ft", f",method=ft,init_step0_from={reference_dir}")
  assert summaries[0] == reference[0]  # the same step-0 model and evaluation
  assert summaries[1]["step"] == 1


def test_init_step0_from_mismatched_model(finished_run, tmp_path):
  reference_dir, _ = finished_run
  with pytest.raises(ValueError, match="model"):
    run(tmp_path / "other", f",model.head_channels=8,init_step0_from={reference_dir}")


def test_step_trained_but_not_evaluated_is_only_evaluated(finished_run, tmp_path, capsys):
  import shutil
  reference_dir, reference = finished_run
  workdir = tmp_path / "copy"
  shutil.copytree(reference_dir, workdir)
  os.remove(checkpoint.metrics_path(str(workdir), 1))
  # The saved config names the reference work dir; it is a restartable field.
  summaries = run(workdir, ",method=mib")
  output = capsys.readouterr().out
  assert "step 1: trained earlier, evaluating its export" in output
  assert " it " not in output.split("step 1: trained earlier")[1]  # no training iterations
  assert summaries == reference


def read_step_file(workdir, step, name):
  return os.path.join(checkpoint.step_dir(str(workdir), step), name)


@pytest.fixture(scope="module")
def gsc_run(finished_run, tmp_path_factory):
  """GSC's step 1 on the MiB run's step 0 (which, like every step 0, saved prototypes)."""
  reference_dir, _ = finished_run
  workdir = tmp_path_factory.mktemp("gsc")
  summaries = run(workdir, f",method=gsc,init_step0_from={reference_dir}")
  return workdir, summaries


def test_gsc_step_saves_thresholds_prototypes_and_diagnostics(gsc_run):
  """The second reconstruction: per-epoch thresholds, the teacher's prototypes saved before
  step 1, no prototypes after it, and the compensation's per-step diagnostics logged."""
  workdir, summaries = gsc_run
  assert summaries[1]["new"] is not None
  thresholds = checkpoint.load_pass_result(str(workdir), 1, "entropy_thresholds")["thresholds"]
  assert thresholds.shape == (2, 4)  # 2 epochs x K_old
  # PLOP's floor; NaN is the released code's verdict on a scan that stops on an empty bin.
  assert np.all(np.isnan(thresholds) | (thresholds >= 0.001))
  prototypes = checkpoint.load_pass_result(str(workdir), 1, "teacher_prototypes")
  assert prototypes["prototypes"].shape == (4, 16) and prototypes["prototype_seen"][0]
  assert np.all(np.isfinite(prototypes["prototypes"]))
  assert not os.path.exists(checkpoint.pass_result_path(str(workdir), 1, "prototypes"))
  log_lines = [json.loads(line) for line in open(workdir / "log.jsonl")]
  step1 = [line for line in log_lines if line.get("step") == 1 and "loss" in line]
  assert step1 and {"ce", "pod", "soft_label", "sharpening", "nu"} <= set(step1[0])
  assert "relation" not in step1[0]  # the class-relation term is off by default
  assert len(step1[0]["group_means"]) == 1  # FISS at step 1: the base group only
  for name in ("weight_mean", "weight_max", "gradient_share"):
    assert len(step1[0][name]) == 2  # per step of the target class: 0 and 1
  curves = tensorboard.read_scalars(str(workdir / "tensorboard"))
  assert {"step_1/weight_max/0", "step_1/weight_max/1", "step_1/nu"} <= set(curves)
  for record in step1:  # shares of one total; none when nu = 0 leaves no CE gradient
    total_share = sum(record["gradient_share"])
    assert np.isclose(total_share, 1.0, rtol=1e-4) or (record["nu"] == 0 and total_share == 0)


def test_gsc_resume_is_bitwise_identical(finished_run, gsc_run, tmp_path):
  """The compensation state, thresholds and prototypes survive an interruption in step 1."""
  reference_dir, _ = finished_run
  gsc_dir, reference = gsc_run
  workdir = tmp_path / "interrupted"
  arguments = f",method=gsc,init_step0_from={reference_dir}"
  with pytest.raises(errors.RunStopped):
    run(workdir, arguments + ",stop_after_iterations=3")
  summaries = run(workdir, arguments)
  for a, b in zip(jax.tree.leaves(read_export(workdir, 1)), jax.tree.leaves(read_export(gsc_dir, 1))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
      checkpoint.load_pass_result(str(workdir), 1, "teacher_prototypes")["prototypes"],
      checkpoint.load_pass_result(str(gsc_dir), 1, "teacher_prototypes")["prototypes"])
  assert summaries == reference


def test_gsc_first_reconstruction_step(finished_run, tmp_path):
  """The first reconstruction's values: prototypes of the final model saved after step 1
  (and read from step 0's), one threshold row per epoch at the median, the class-relation
  term logged, per-step groups."""
  reference_dir, _ = finished_run
  workdir = tmp_path / "first"
  first = "".join(f",{key}={value}" for key, value in gsc.FIRST_RECONSTRUCTION.items())
  summaries = run(workdir, f",method=gsc{first},init_step0_from={reference_dir}")
  assert summaries[1]["new"] is not None
  thresholds = checkpoint.load_pass_result(str(workdir), 1, "entropy_thresholds")["thresholds"]
  np.testing.assert_array_equal(thresholds[0], thresholds[1])  # the median at every epoch
  result = checkpoint.load_pass_result(str(workdir), 1, "prototypes")
  assert result["prototypes"].shape == (5, 16) and result["prototype_seen"][0]
  assert not os.path.exists(checkpoint.pass_result_path(str(workdir), 1, "teacher_prototypes"))
  log_lines = [json.loads(line) for line in open(workdir / "log.jsonl")]
  step1 = [line for line in log_lines if line.get("step") == 1 and "loss" in line]
  assert step1 and "relation" in step1[0]
  assert len(step1[0]["group_means"]) == 1  # "step" grouping at step 1: step 0's group


def test_plop_exact_median_thresholds(finished_run, tmp_path):
  reference_dir, _ = finished_run
  workdir = tmp_path / "plop"
  summaries = run(workdir, f",method=plop,pseudo.thresholds=median,init_step0_from={reference_dir}")
  thresholds = checkpoint.load_pass_result(str(workdir), 1, "entropy_thresholds")["thresholds"]
  # Exact medians of the normalised entropies: within [floor, 1 / (K_old log K)].
  bound = 1 / (4 * np.log(5))
  assert thresholds.shape == (2, 4)  # 2 epochs x K_old, the median at each
  assert np.all((0.001 <= thresholds) & (thresholds <= bound + 1e-6))
  assert summaries[1]["step"] == 1
  assert not os.path.exists(checkpoint.pass_result_path(str(workdir), 1, "prototypes"))

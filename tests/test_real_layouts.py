"""Short training runs on fixture trees in each real dataset's on-disk layout.

Each run goes through the real code path: the dataset config, the file source, the label
scan and cached step lists, the grain pipeline, two train steps and the evaluation.
"""

import json
import os

import jax
import numpy as np
import pytest

from configs import ade
from configs import cityscapes
from configs import synthetic
from configs import voc
from gsc_jax import checkpoint
from gsc_jax import mesh
from gsc_jax import tasks
from gsc_jax import train
from gsc_jax import workdir as workdir_lib
from gsc_jax.models import convert
from gsc_jax.models import resnet
from gsc_jax.models import step_model
from tests import dataset_trees

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

TINY = ("model.backbone=resnet_tiny,model.head_channels=16,data.crop_size=32,"
        "data.eval_size=32,optim.batch_size=4,data.eval_batch_size=4,optim.epochs_step0=1,"
        "optim.epochs_incremental=1,log_every=1,data.num_threads=1")


def _run(config_module, arg, root, tmp_path):
  config = config_module.get_config(
      f"{arg},{TINY},data.root={root},data.split_cache_dir={tmp_path / 'cache'}")
  workdir = workdir_lib.prepare(config, str(tmp_path / "run"))
  return workdir, train.train_and_evaluate(config, workdir)


def _log(workdir):
  with open(os.path.join(workdir, "log.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_voc_tree_two_steps_with_plop(tmp_path):
  # 19-1: step 0 = classes 0-19, step 1 = class 20.
  train_classes = [[1], [2, 3], [5], [19], [1, 20], [20], [20, 7], [20]]
  dataset_trees.write_voc_tree(tmp_path / "voc", train_classes, [[1], [20], [3, 20], [2]])
  workdir, summaries = _run(voc, "19-1,method=plop", tmp_path / "voc", tmp_path)
  assert [s["num_test_images"] for s in summaries] == [3, 4]
  assert summaries[1]["new"] is not None
  assert summaries[1]["evaluation"].startswith("shorter side resized to 32, centre crop")
  step1 = [line for line in _log(workdir) if line.get("step") == 1 and "pod" in line]
  assert step1 and all(np.isfinite(line["loss"]) for line in step1)
  cached = os.listdir(next((tmp_path / "cache" / "voc").glob("train_aug-*")))
  assert "train_19-1_natural_ov_step1.json" in cached and "label_classes.npz" in cached


def test_ade_tree_two_steps_ignoring_class_0(tmp_path):
  # 100-50: step 0 = classes 0-100, step 1 = 101-150.
  train_classes = [[0, 3], [0, 50], [7], [100, 0], [0, 101], [120], [150, 4], [101, 149]]
  dataset_trees.write_ade_tree(tmp_path / "ade", train_classes, [[0, 3], [0, 120], [101]])
  workdir, summaries = _run(ade, "100-50,method=mib,data.eval_ignore_background=true",
                            tmp_path / "ade", tmp_path)
  assert [s["step"] for s in summaries] == [0, 1]
  assert "class 0 ignored" in summaries[1]["evaluation"]
  iou = summaries[0]["iou"]  # read back from metrics.json: string keys
  assert iou["0"] is None and iou["3"] is not None  # class 0 not scored
  with open(os.path.join(workdir, "summary.json")) as f:
    assert "class 0 ignored" in json.load(f)["evaluation"]


def test_cityscapes_tree_domain_steps(tmp_path):
  # 11-5: step 0 = city ids 0-10 (aachen, bremen here), step 1 = 11-15 (dusseldorf here).
  dataset_trees.write_cityscapes_tree(
      tmp_path / "cityscapes", {"aachen": 5, "bremen": 5, "dusseldorf": 5},
      {"frankfurt": 5})
  workdir, summaries = _run(cityscapes, "11-5,method=plop,last_step=1",
                            tmp_path / "cityscapes", tmp_path)
  # 80% of each city trains, 20% tests: step 0 tests aachen + bremen, step 1 adds dusseldorf.
  assert [s["num_test_images"] for s in summaries] == [2, 3]
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["pseudo"]["entropy"] is False and config["loss"]["pod_weight"] == 0.01
  variables = checkpoint.read_export_arrays(workdir, 1)
  assert sorted(k for k in variables["params"] if k.startswith("classifier")) == [
      "classifier_0"]
  assert variables["params"]["classifier_0"]["kernel"].shape[-1] == 19
  step1 = [line for line in _log(workdir) if line.get("step") == 1 and "pod" in line]
  assert step1 and all(np.isfinite(line["pod"]) for line in step1)


def test_domain_tasks_refuse_background_shift_parts(tmp_path):
  config = cityscapes.get_config(f"11-5,method=gsc,gsc.prototypes=true,data.root={tmp_path}")
  with pytest.raises(ValueError, match="gsc.prototypes cannot be used on the domain"):
    workdir_lib.prepare(config, str(tmp_path / "run"))


def test_bad_label_in_a_tree_stops_the_run_naming_the_file(tmp_path):
  names = dataset_trees.write_voc_tree(tmp_path / "voc", [[1], [2], [20], [20]], [[1]])
  label = tmp_path / "voc" / "SegmentationClassAug" / f"{names['train'][2]}.png"
  dataset_trees.write_label_png(label, np.full((48, 64), 33, np.uint8), "L")
  with pytest.raises(ValueError, match=rf"{label}.*values \[33\]"):
    _run(voc, "19-1", tmp_path / "voc", tmp_path)


def test_missing_root_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="ADEChallengeData2016|not found"):
    _run(ade, "100-50", tmp_path / "nowhere", tmp_path)


def test_step0_starts_from_the_converted_backbone(tmp_path, monkeypatch):
  monkeypatch.setitem(resnet.BACKBONES, "resnet_fixture", resnet.BackboneSpec((2, 1, 1, 2), 8))
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained_iabn_fixture.npz")
  variables, metadata = convert.convert_checkpoint(fixture, "iabn", "resnet_fixture")
  path = str(tmp_path / "backbone.npz")
  convert.save_backbone(path, variables, metadata)

  def initial_variables(extra=""):
    config = synthetic.get_config("15-1,model.backbone=resnet_fixture,model.head_channels=8,"
                                  f"data.crop_size=32,model.pretrained={path}{extra}")
    facts = tasks.step_facts(tasks.task_of(config), 0)
    model = step_model.make_model(config, facts.classifier_sizes)
    return step_model.initial_variables(config, facts, model, None, mesh.make_mesh(), print)

  initial = initial_variables()
  for collection in ("params", "batch_stats"):
    got, expected = initial[collection]["backbone"], variables[collection]
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(got_leaf, expected_leaf)
  assert "head" in initial["params"] and "classifier_0" in initial["params"]
  with pytest.raises(ValueError, match="set model.activation=leaky_relu"):
    initial_variables(",model.activation=relu")

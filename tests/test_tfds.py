"""tfds ArrayRecord builds of tiny VOC, ADE20K and Cityscapes trees, read back without TF."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gsc_jax.data import ade
from gsc_jax.data import cityscapes
from gsc_jax.data import tfds_source
from gsc_jax.data import voc
from gsc_jax.tools import build_tfds
from tests import dataset_trees

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# dataset -> (num_classes, {pipeline split: split of the file source}).
DATASETS = {
    "voc": (21, {"train": "train_aug", "val": "val"}),
    "ade": (151, {"train": "training", "val": "validation"}),
    "cityscapes": (19, {"train": "train", "val": "val"}),
}
FILE_SOURCES = {"voc": voc.VOCSegmentation, "ade": ade.ADE20KSegmentation,
                "cityscapes": cityscapes.CityscapesSegmentation}


def _write_tree(dataset: str, root: str) -> None:
  """A tiny tree of ``dataset`` under ``root``: 3 train and 2 val images."""
  if dataset == "voc":
    dataset_trees.write_voc_tree(root, [(1, 15), (20,), (7,)], [(3,), (5, 9)])
  elif dataset == "ade":
    dataset_trees.write_ade_tree(root, [(1, 150), (42,), (7, 8)], [(3,), (100,)])
  else:
    dataset_trees.write_cityscapes_tree(root, {"bochum": 1, "aachen": 2}, {"frankfurt": 2})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The three trees and one tfds data_dir holding all three builds."""
  base = tmp_path_factory.mktemp("tfds")
  roots = {dataset: str(base / dataset) for dataset in DATASETS}
  data_dir = str(base / "tfds")
  for dataset, root in roots.items():
    _write_tree(dataset, root)
    build_tfds.build(dataset, root, data_dir)
  return roots, data_dir


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("split", ["train", "val"])
def test_reads_back_what_the_file_source_reads(built, dataset, split):
  roots, data_dir = built
  num_classes, file_splits = DATASETS[dataset]
  files = FILE_SOURCES[dataset](roots[dataset], file_splits[split], num_classes)
  source = tfds_source.TFDSSegmentation(dataset, split, data_dir, num_classes)
  assert source.split == split and source.num_classes == num_classes
  assert len(source) == len(files) > 0
  for index in range(len(files)):
    expected, example = files[index], source[index]
    assert example["name"] == expected["name"] == source.name(index) == files.name(index)
    assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], expected["image"])
    np.testing.assert_array_equal(example["label"], expected["label"])
    np.testing.assert_array_equal(source.read_label(index), files.read_label(index))
    if dataset == "cityscapes":
      assert source.city(index) == files.city(index)
  with pytest.raises(IndexError, match="out of range"):
    source[len(source)]


def test_fingerprint_depends_on_split_and_data_dir(built):
  _, data_dir = built
  train = tfds_source.TFDSSegmentation("voc", "train", data_dir, 21)
  assert train.fingerprint() == tfds_source.TFDSSegmentation(
      "voc", "train", data_dir, 21).fingerprint()
  assert train.fingerprint() != tfds_source.TFDSSegmentation(
      "voc", "val", data_dir, 21).fingerprint()
  assert train.fingerprint() != tfds_source.TFDSSegmentation(
      "voc", "train", data_dir + "/", 21).fingerprint()


def test_city_only_for_cityscapes(built):
  _, data_dir = built
  with pytest.raises(ValueError, match="only defined for cityscapes"):
    tfds_source.TFDSSegmentation("voc", "train", data_dir, 21).city(0)


def test_num_classes_must_match_the_build(built):
  _, data_dir = built
  with pytest.raises(ValueError, match="set data.num_classes=21"):
    tfds_source.TFDSSegmentation("voc", "train", data_dir, 19)


def test_missing_dataset_says_how_to_build_it(tmp_path):
  data_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError,
                     match="python -m gsc_jax.tools.build_tfds --dataset=ade"):
    tfds_source.TFDSSegmentation("ade", "train", data_dir, 151)


def test_file_source_errors_propagate_and_nothing_is_built(tmp_path):
  root, data_dir = str(tmp_path / "voc"), str(tmp_path / "tfds")
  written = dataset_trees.write_voc_tree(root, [(1,), (2,)], [(3,)])
  corrupt = os.path.join(root, "JPEGImages", written["train"][1] + ".jpg")
  dataset_trees.corrupt_file(corrupt)
  with pytest.raises(ValueError, match=re.escape(f"cannot decode image {corrupt!r}")):
    build_tfds.build("voc", root, data_dir)
  with pytest.raises(FileNotFoundError, match="not found"):
    tfds_source.TFDSSegmentation("voc", "train", data_dir, 21)


# Builds with the command's main() and reads back while TensorFlow appears installed (its
# spec is found) but importing it fails and is recorded: code that would import TF where it
# is installed shows here, where it is not.
NO_TF_SCRIPT = """
import importlib.abc
import importlib.machinery
import sys

attempts = []

class RefuseTensorFlow(importlib.abc.Loader):
  def create_module(self, spec):
    attempts.append(spec.name)
    raise ImportError("importing " + spec.name + " is refused in this test")

  def exec_module(self, module):
    pass

class FindTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] == "tensorflow":
      return importlib.machinery.ModuleSpec(name, RefuseTensorFlow())
    return None

sys.meta_path.insert(0, FindTensorFlow())
import runpy
from gsc_jax.data import tfds_source

root, data_dir = sys.argv[1:]
sys.argv = ["build_tfds", "--dataset=voc", "--root=" + root, "--data_dir=" + data_dir]
try:
  runpy.run_module("gsc_jax.tools.build_tfds", run_name="__main__")
except SystemExit as exit:
  assert not exit.code, exit.code
source = tfds_source.TFDSSegmentation("voc", "val", data_dir, 21)
source[0], source.read_label(0), source.name(0)
assert not attempts and "tensorflow" not in sys.modules, attempts
print("no tensorflow")
"""


def test_build_and_read_never_import_tensorflow(tmp_path):
  root, data_dir = str(tmp_path / "voc"), str(tmp_path / "tfds")
  dataset_trees.write_voc_tree(root, [(1,)], [(2,), (3,)])
  result = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, root, data_dir],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "no tensorflow" in result.stdout
  assert f"Output: {data_dir}/voc_aug/1.0.0" in result.stdout
  assert "validation: 2 examples" in result.stdout

"""ADE20K source on a tiny ADEChallengeData2016 tree written in a temporary directory."""

import os
import re
import shutil

import numpy as np
import pytest

from gsc_jax.data import ade
from tests import dataset_trees

TRAIN_CLASSES = [[1, 5], [150], [], [12, 40, 99]]
VAL_CLASSES = [[3], [7, 150]]


@pytest.fixture
def ade_tree(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  written = dataset_trees.write_ade_tree(root, TRAIN_CLASSES, VAL_CLASSES)
  return str(root), written


def _label_path(root, split, name):
  return os.path.join(root, "annotations", split, name + ".png")


def test_reads_images_labels_and_names(ade_tree):
  root, written = ade_tree
  source = ade.ADE20KSegmentation(root, "training")
  assert len(source) == 4 and source.num_classes == 151 and source.split == "training"
  assert [source.name(i) for i in range(4)] == [
      "ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003", "ADE_train_00000004"]
  for index, classes in enumerate(TRAIN_CLASSES):
    name = source.name(index)
    sample = source[index]
    assert sample["name"] == name
    assert sample["image"].shape == (48, 64, 3) and sample["image"].dtype == np.uint8
    # JPEG is lossy: the smooth generated image comes back within a few levels.
    error = np.abs(sample["image"].astype(int) - written["images"][name].astype(int))
    assert error.mean() < 3
    assert sample["label"].dtype == np.uint8
    np.testing.assert_array_equal(sample["label"], written["labels"][name])
    # No shift: 0 ("other") stays 0, the class ids stay as stored.
    assert np.unique(sample["label"]).tolist() == sorted({0, *classes})
    np.testing.assert_array_equal(source.read_label(index), sample["label"])
    assert source.image_path(index) == os.path.join(root, "images", "training", name + ".jpg")
    assert source.label_path(index) == _label_path(root, "training", name)


@pytest.mark.parametrize("split, canonical, size", [
    ("validation", "validation", 2), ("val", "validation", 2), ("train", "training", 4)])
def test_split_aliases(ade_tree, split, canonical, size):
  source = ade.ADE20KSegmentation(ade_tree[0], split)
  assert source.split == canonical and len(source) == size
  assert repr(source) == (f"ADE20KSegmentation(root={ade_tree[0]!r}, split={canonical!r}, "
                          f"num_images={size}, num_classes=151)")


def test_unknown_split(ade_tree):
  with pytest.raises(ValueError, match="'test'.*training, validation, train, val"):
    ade.ADE20KSegmentation(ade_tree[0], "test")


def test_entries_sorted_by_name_and_non_jpg_files_ignored(ade_tree):
  root, _ = ade_tree
  image_dir = os.path.join(root, "images", "validation")
  os.rename(os.path.join(image_dir, "ADE_val_00000001.jpg"),
            os.path.join(image_dir, "ADE_val_00000009.jpg"))
  os.rename(_label_path(root, "validation", "ADE_val_00000001"),
            _label_path(root, "validation", "ADE_val_00000009"))
  with open(os.path.join(image_dir, "notes.txt"), "w") as notes:
    notes.write("not an image")
  source = ade.ADE20KSegmentation(root, "val")
  assert [source.name(i) for i in range(len(source))] == ["ADE_val_00000002",
                                                          "ADE_val_00000009"]


def test_missing_root(tmp_path):
  missing = tmp_path / "ADEChallengeData2016"
  with pytest.raises(FileNotFoundError) as error:
    ade.ADE20KSegmentation(str(missing), "training")
  message = str(error.value)
  assert str(missing) in message and "set data.root" in message
  assert "annotations/training/ADE_train_00000001.png" in message


@pytest.mark.parametrize("directory", ["images", "annotations"])
def test_missing_split_directory(ade_tree, directory):
  root, _ = ade_tree
  shutil.rmtree(os.path.join(root, directory, "validation"))
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f"directory not found: '{root}/{directory}/validation'")):
    ade.ADE20KSegmentation(root, "validation")
  assert len(ade.ADE20KSegmentation(root, "training")) == 4


def test_image_without_annotation(ade_tree):
  root, _ = ade_tree
  label_path = _label_path(root, "training", "ADE_train_00000003")
  os.remove(label_path)
  with pytest.raises(FileNotFoundError) as error:
    ade.ADE20KSegmentation(root, "training")
  message = str(error.value)
  assert label_path in message
  assert os.path.join(root, "images", "training", "ADE_train_00000003.jpg") in message


def test_images_directory_without_jpg(ade_tree):
  root, _ = ade_tree
  image_dir = os.path.join(root, "images", "validation")
  for file_name in os.listdir(image_dir):
    os.remove(os.path.join(image_dir, file_name))
  with pytest.raises(FileNotFoundError, match=re.escape(f"no .jpg images in '{image_dir}'")):
    ade.ADE20KSegmentation(root, "validation")


def test_corrupt_image(ade_tree):
  root, _ = ade_tree
  dataset_trees.corrupt_file(os.path.join(root, "images", "training", "ADE_train_00000002.jpg"))
  source = ade.ADE20KSegmentation(root, "training")
  for read in (source.__getitem__, source.read_label):  # read_label reads the header
    with pytest.raises(ValueError, match=r"ADE_train_00000002\.jpg"):
      read(1)
  source[0]  # the other images still read


def test_out_of_range_label(ade_tree):
  root, _ = ade_tree
  label_path = _label_path(root, "validation", "ADE_val_00000002")
  dataset_trees.write_label_png(label_path, dataset_trees.stripe_label([0, 151, 200]), "L")
  source = ade.ADE20KSegmentation(root, "validation")
  for read in (source.__getitem__, source.read_label):
    with pytest.raises(ValueError, match=r"ADE_val_00000002\.png.*\[151, 200\].*num_classes"):
      read(1)


def test_void_is_allowed(ade_tree):
  root, _ = ade_tree
  label = dataset_trees.stripe_label([0, 150], void_border=True)
  dataset_trees.write_label_png(_label_path(root, "validation", "ADE_val_00000001"), label,
                                "L")
  np.testing.assert_array_equal(ade.ADE20KSegmentation(root, "val").read_label(0), label)


def test_fingerprint(ade_tree):
  root, _ = ade_tree
  fingerprint = ade.ADE20KSegmentation(root, "training").fingerprint()
  assert len(fingerprint) == 64
  assert ade.ADE20KSegmentation(root, "train").fingerprint() == fingerprint
  assert ade.ADE20KSegmentation(root, "validation").fingerprint() != fingerprint

  # A label rewritten with different content (a different size).
  label_path = _label_path(root, "training", "ADE_train_00000001")
  noisy = np.random.default_rng(0).integers(0, 151, size=(48, 64), dtype=np.uint8)
  size_before = os.path.getsize(label_path)
  dataset_trees.write_label_png(label_path, noisy, "L")
  assert os.path.getsize(label_path) != size_before
  changed_label = ade.ADE20KSegmentation(root, "training").fingerprint()
  assert changed_label != fingerprint

  # The same size but a new modification time.
  stat = os.stat(label_path)
  os.utime(label_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
  changed_time = ade.ADE20KSegmentation(root, "training").fingerprint()
  assert changed_time != changed_label

  # One more image in the list.
  image_dir = os.path.join(root, "images", "training")
  shutil.copy(os.path.join(image_dir, "ADE_train_00000001.jpg"),
              os.path.join(image_dir, "ADE_train_00000005.jpg"))
  shutil.copy(label_path, _label_path(root, "training", "ADE_train_00000005"))
  assert ade.ADE20KSegmentation(root, "training").fingerprint() != changed_time

"""Cityscapes source on a tiny leftImg8bit + gtFine tree written in a temporary directory."""

import os
import re
import shutil

import numpy as np
import pytest

from gsc_jax import tasks
from gsc_jax.data import cityscapes
from tests import dataset_trees

TRAIN_CITIES = {"bochum": 1, "aachen": 2}
VAL_CITIES = {"frankfurt": 2}
# The official labelId -> trainId table, written out independently of the module.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                      23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture
def cityscapes_tree(tmp_path):
  root = tmp_path / "cityscapes"
  written = dataset_trees.write_cityscapes_tree(root, TRAIN_CITIES, VAL_CITIES)
  return str(root), written


def _image_path(root, split, name):
  city = name.split("_")[0]
  return os.path.join(root, "leftImg8bit", split, city, name + "_leftImg8bit.png")


def _label_path(root, split, name):
  city = name.split("_")[0]
  return os.path.join(root, "gtFine", split, city, name + "_gtFine_labelIds.png")


def test_reads_images_labels_names_and_cities(cityscapes_tree):
  root, written = cityscapes_tree
  source = cityscapes.CityscapesSegmentation(root, "train")
  assert len(source) == 3 and source.num_classes == 19
  names = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019"]
  assert [source.name(i) for i in range(3)] == names  # cities sorted, then files
  assert [source.city(i) for i in range(3)] == ["aachen", "aachen", "bochum"]
  assert source.cities() == ["aachen", "aachen", "bochum"]
  for index, name in enumerate(names):
    sample = source[index]
    assert sample["name"] == name
    np.testing.assert_array_equal(sample["image"], written["images"][name])  # PNG: lossless
    # Stripes of labelIds 0, 1, 7, 8, 26 -> void, void, road 0, sidewalk 1, car 13.
    raw = written["labels"][name]
    expected = np.full_like(raw, 255)
    for label_id, train_id in ((7, 0), (8, 1), (26, 13)):
      expected[raw == label_id] = train_id
    assert np.unique(expected).tolist() == [0, 1, 13, 255]
    np.testing.assert_array_equal(sample["label"], expected)
    np.testing.assert_array_equal(source.read_label(index), expected)
    assert source.image_path(index) == _image_path(root, "train", name)
    assert source.label_path(index) == _label_path(root, "train", name)
  with pytest.raises(IndexError):
    source.city(3)
  val = cityscapes.CityscapesSegmentation(root, "val")
  assert val.cities() == ["frankfurt", "frankfurt"]


def test_every_label_id_maps_to_the_official_train_id(cityscapes_tree):
  root, _ = cityscapes_tree
  all_label_ids = np.arange(34, dtype=np.uint8)
  raw = np.tile(np.repeat(all_label_ids, 2), (32, 1))  # 32 x 68: every labelId 0..33
  dataset_trees.write_label_png(_label_path(root, "val", "frankfurt_000000_000019"), raw,
                                "L")
  dataset_trees.write_image(_image_path(root, "val", "frankfurt_000000_000019"),
                            np.zeros((32, 68, 3), np.uint8))
  label = cityscapes.CityscapesSegmentation(root, "val").read_label(0)
  for label_id in range(34):
    expected = OFFICIAL_TRAIN_IDS.get(label_id, 255)
    assert (label[raw == label_id] == expected).all(), label_id
  assert cityscapes.LABEL_ID_TO_TRAIN_ID == {
      label_id: OFFICIAL_TRAIN_IDS.get(label_id, 255) for label_id in range(34)}
  assert len(cityscapes.CLASS_NAMES) == 19
  assert cityscapes.CLASS_NAMES[0] == "road" and cityscapes.CLASS_NAMES[13] == "car"
  assert cityscapes.CLASS_NAMES[18] == "bicycle"


def test_label_value_above_33_is_rejected(cityscapes_tree):
  root, _ = cityscapes_tree
  label_path = _label_path(root, "train", "bochum_000000_000019")
  dataset_trees.write_label_png(label_path, dataset_trees.stripe_label([7, 34, 255], (32, 64)),
                                "L")
  source = cityscapes.CityscapesSegmentation(root, "train")
  for read in (source.__getitem__, source.read_label):
    with pytest.raises(ValueError, match=re.escape(
        f"label {label_path!r} has values [34, 255] above 33: labelIds images hold 0..33; "
        "is this a *_gtFine_labelIds.png?")):
      read(2)
  source.read_label(0)  # the other labels still read


def test_fewer_classes_makes_higher_train_ids_invalid(cityscapes_tree):
  root, _ = cityscapes_tree
  source = cityscapes.CityscapesSegmentation(root, "train", num_classes=13)
  with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png.*\[13\]"):
    source.read_label(0)  # car (train id 13)


def test_corrupt_image(cityscapes_tree):
  root, _ = cityscapes_tree
  image_path = _image_path(root, "val", "frankfurt_000001_000019")
  dataset_trees.corrupt_file(image_path)
  source = cityscapes.CityscapesSegmentation(root, "val")
  with pytest.raises(ValueError, match=re.escape(f"cannot decode image {image_path!r}")):
    source[1]
  source[0]


def test_unknown_split(cityscapes_tree):
  with pytest.raises(ValueError, match="'test'.*train, val"):
    cityscapes.CityscapesSegmentation(cityscapes_tree[0], "test")


def test_missing_root(tmp_path):
  missing = tmp_path / "cityscapes"
  with pytest.raises(FileNotFoundError) as error:
    cityscapes.CityscapesSegmentation(str(missing), "train")
  message = str(error.value)
  assert str(missing) in message and "set data.root" in message
  assert "gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png" in message


@pytest.mark.parametrize("directory", ["leftImg8bit", "gtFine"])
def test_missing_split_directory(cityscapes_tree, directory):
  root, _ = cityscapes_tree
  shutil.rmtree(os.path.join(root, directory, "val"))
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f"directory not found: '{root}/{directory}/val'")):
    cityscapes.CityscapesSegmentation(root, "val")


def test_image_without_label(cityscapes_tree):
  root, _ = cityscapes_tree
  label_path = _label_path(root, "train", "aachen_000001_000019")
  os.remove(label_path)
  with pytest.raises(FileNotFoundError) as error:
    cityscapes.CityscapesSegmentation(root, "train")
  assert label_path in str(error.value)
  assert _image_path(root, "train", "aachen_000001_000019") in str(error.value)


def test_city_without_images(cityscapes_tree):
  root, _ = cityscapes_tree
  city_dir = os.path.join(root, "leftImg8bit", "train", "bremen")
  os.makedirs(city_dir)
  os.makedirs(os.path.join(root, "gtFine", "train", "bremen"))
  with pytest.raises(FileNotFoundError, match=re.escape(f"city directory '{city_dir}'")):
    cityscapes.CityscapesSegmentation(root, "train")


def test_unknown_city_is_rejected(cityscapes_tree):
  root, _ = cityscapes_tree
  dataset_trees.write_cityscapes_tree(root, {"atlantis": 1}, {})
  with pytest.raises(ValueError) as error:
    cityscapes.CityscapesSegmentation(root, "train")
  message = str(error.value)
  assert "'atlantis'" in message
  assert ", ".join(tasks.CITYSCAPES_CITIES) in message


def test_fingerprint(cityscapes_tree):
  root, _ = cityscapes_tree
  fingerprint = cityscapes.CityscapesSegmentation(root, "train").fingerprint()
  assert cityscapes.CityscapesSegmentation(root, "train").fingerprint() == fingerprint
  assert cityscapes.CityscapesSegmentation(root, "val").fingerprint() != fingerprint

  label_path = _label_path(root, "train", "aachen_000000_000019")
  size_before = os.path.getsize(label_path)
  noisy = np.random.default_rng(1).integers(0, 34, size=(32, 64), dtype=np.uint8)
  dataset_trees.write_label_png(label_path, noisy, "L")
  assert os.path.getsize(label_path) != size_before
  changed_label = cityscapes.CityscapesSegmentation(root, "train").fingerprint()
  assert changed_label != fingerprint

  dataset_trees.write_cityscapes_tree(root, {"bremen": 1}, {})  # one more city
  assert cityscapes.CityscapesSegmentation(root, "train").fingerprint() != changed_label

"""build_voc_aug on tiny VOC 2012 and SBD releases written in a temporary directory."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gsc_jax.data import voc
from gsc_jax.tools import build_voc_aug
from tests import dataset_trees

VOC_TRAIN = ["2007_000010", "2007_000020", "2007_000030"]
VOC_VAL = ["2007_000040", "2007_000050"]
# 2007_000020 has both a VOC and an SBD label; 2007_000040 and 2007_000050 are VOC val ids
# that SBD lists too, so they must stay out of train_aug.
SBD_TRAIN = ["2008_000060", "2007_000020", "2007_000040", "2008_000070"]
SBD_VAL = ["2008_000080", "2007_000050"]
EXPECTED_TRAIN_AUG = ["2007_000010", "2007_000020", "2007_000030", "2008_000060",
                      "2008_000070", "2008_000080"]


@pytest.fixture
def originals(tmp_path):
  voc_root, sbd_root = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE"
  written = dataset_trees.write_voc_sbd_originals(voc_root, sbd_root, VOC_TRAIN, VOC_VAL,
                                                  SBD_TRAIN, SBD_VAL)
  return str(voc_root), str(sbd_root), written


def _read_list(path) -> list[str]:
  with open(path) as list_file:
    return list_file.read().split()


def _read_png(path) -> np.ndarray:
  with Image.open(path) as image:
    assert image.mode == "L"
    return np.asarray(image)


def test_builds_lists_and_labels(originals, tmp_path, capsys):
  voc_root, sbd_root, written = originals
  out = tmp_path / "out"
  counts = build_voc_aug.build(voc_root, sbd_root, str(out))
  assert counts == {"train_aug": 6, "val": 2, "labels": 8, "labels_from_voc": 5,
                    "labels_from_sbd": 3}
  assert _read_list(out / "ImageSets/Segmentation/train_aug.txt") == EXPECTED_TRAIN_AUG
  assert _read_list(out / "ImageSets/Segmentation/val.txt") == VOC_VAL
  assert sorted(os.listdir(out / "SegmentationClassAug")) == sorted(
      image_id + ".png" for image_id in EXPECTED_TRAIN_AUG + VOC_VAL)
  for image_id in EXPECTED_TRAIN_AUG + VOC_VAL:
    label = _read_png(out / "SegmentationClassAug" / f"{image_id}.png")
    if image_id in VOC_TRAIN + VOC_VAL:  # the VOC PNG wins, void border included
      expected = written["voc_labels"][image_id]
      assert label[0, 0] == 255
    else:
      expected = written["sbd_labels"][image_id]
    np.testing.assert_array_equal(label, expected, err_msg=image_id)
  assert not np.array_equal(written["voc_labels"]["2007_000020"],
                            written["sbd_labels"]["2007_000020"])

  assert os.path.islink(out / "JPEGImages")
  assert os.path.realpath(out / "JPEGImages") == os.path.realpath(
      os.path.join(voc_root, "JPEGImages"))
  output = capsys.readouterr().out
  assert "Linked" in output and "8/8 labels" in output
  assert "WARNING: train_aug has 6 ids but the published SegmentationClassAug has 10582" \
      in output
  assert "WARNING: val has 2 ids but the published SegmentationClassAug has 1449" in output

  # The output is a valid VOC source.
  source = voc.VOCSegmentation(str(out), "train_aug")
  assert [source.name(i) for i in range(len(source))] == EXPECTED_TRAIN_AUG
  np.testing.assert_array_equal(source[3]["label"], written["sbd_labels"]["2008_000060"])


def test_no_warning_when_the_counts_match(originals, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(build_voc_aug, "PUBLISHED_COUNTS", {"train_aug": 6, "val": 2})
  build_voc_aug.build(originals[0], originals[1], str(tmp_path / "out"))
  assert "WARNING" not in capsys.readouterr().out


def test_out_equal_to_voc_and_rerun_overwrites(originals):
  voc_root, sbd_root, written = originals
  build_voc_aug.build(voc_root, sbd_root, voc_root)
  assert not os.path.islink(os.path.join(voc_root, "JPEGImages"))
  label_path = os.path.join(voc_root, "SegmentationClassAug", "2008_000070.png")
  dataset_trees.write_label_png(label_path, np.zeros((48, 64), np.uint8), "L")
  build_voc_aug.build(voc_root, sbd_root, voc_root)
  np.testing.assert_array_equal(_read_png(label_path), written["sbd_labels"]["2008_000070"])
  assert len(voc.VOCSegmentation(voc_root, "train_aug")) == 6
  assert len(voc.VOCSegmentation(voc_root, "val")) == 2


def test_rerun_keeps_the_images_link(originals, tmp_path):
  out = str(tmp_path / "out")
  build_voc_aug.build(originals[0], originals[1], out)
  assert build_voc_aug.build(originals[0], originals[1], out)["labels"] == 8
  assert os.path.islink(os.path.join(out, "JPEGImages"))


def test_existing_images_directory_in_out_is_an_error(originals, tmp_path):
  out = tmp_path / "out"
  (out / "JPEGImages").mkdir(parents=True)
  with pytest.raises(FileExistsError, match=re.escape(f"'{out}/JPEGImages' exists")):
    build_voc_aug.build(originals[0], originals[1], str(out))


@pytest.mark.parametrize("relative_path", [
    "VOC2012/ImageSets/Segmentation/train.txt", "VOC2012/ImageSets/Segmentation/val.txt",
    "benchmark_RELEASE/dataset/train.txt", "benchmark_RELEASE/dataset/val.txt",
    "VOC2012/JPEGImages/2008_000080.jpg"])
def test_missing_input_file(originals, tmp_path, relative_path):
  os.remove(tmp_path / relative_path)
  with pytest.raises(FileNotFoundError, match=re.escape(f"'{tmp_path / relative_path}'")):
    build_voc_aug.build(originals[0], originals[1], str(tmp_path / "out"))


@pytest.mark.parametrize("relative_path", [
    "VOC2012", "VOC2012/SegmentationClass", "benchmark_RELEASE/dataset/cls"])
def test_missing_input_directory(originals, tmp_path, relative_path):
  os.rename(tmp_path / relative_path, tmp_path / "moved")
  with pytest.raises(FileNotFoundError, match=re.escape(f"'{tmp_path / relative_path}'")):
    build_voc_aug.build(originals[0], originals[1], str(tmp_path / "out"))


def test_id_with_neither_label(originals, tmp_path):
  voc_root, sbd_root, _ = originals
  mat_path = os.path.join(sbd_root, "dataset", "cls", "2008_000060.mat")
  os.remove(mat_path)
  with pytest.raises(FileNotFoundError) as error:
    build_voc_aug.build(voc_root, sbd_root, str(tmp_path / "out"))
  assert mat_path in str(error.value)
  assert os.path.join(voc_root, "SegmentationClass", "2008_000060.png") in str(error.value)


def test_corrupt_sbd_label(originals, tmp_path):
  voc_root, sbd_root, _ = originals
  mat_path = os.path.join(sbd_root, "dataset", "cls", "2008_000070.mat")
  dataset_trees.corrupt_file(mat_path)
  with pytest.raises(ValueError, match=re.escape(f"SBD label {mat_path!r}")):
    build_voc_aug.build(voc_root, sbd_root, str(tmp_path / "out"))


def test_out_of_range_voc_label(originals, tmp_path):
  voc_root, sbd_root, _ = originals
  png_path = os.path.join(voc_root, "SegmentationClass", "2007_000030.png")
  dataset_trees.write_label_png(png_path, dataset_trees.stripe_label([0, 21]), "P")
  with pytest.raises(ValueError, match=re.escape(f"label {png_path!r} has values [21]")):
    build_voc_aug.build(voc_root, sbd_root, str(tmp_path / "out"))


def test_command_line(originals, tmp_path):
  voc_root, sbd_root, _ = originals
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "gsc_jax.tools.build_voc_aug", f"--voc={voc_root}",
       f"--sbd={sbd_root}", f"--out={out}"],
      capture_output=True, text=True, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr
  assert "train_aug 6 ids (published 10582)" in result.stdout
  assert _read_list(out / "ImageSets/Segmentation/train_aug.txt") == EXPECTED_TRAIN_AUG

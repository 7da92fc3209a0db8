"""Pascal VOC source on a tiny tree written in a temporary directory."""

import os

import numpy as np
import pytest
from PIL import Image

from gsc_jax.data import voc

# Three images: id -> (height, width, colour, label classes).
IMAGES = {
    "2007_000032": (12, 16, (200, 30, 30), (0, 1, 255)),
    "2007_000039": (16, 10, (30, 200, 30), (0, 15)),
    "2008_000001": (9, 9, (30, 30, 200), (0, 20, 7)),
}
VOC_PALETTE = [value for index in range(256)
               for value in (index * 37 % 256, index * 91 % 256, index * 13 % 256)]


def _label(height: int, width: int, classes) -> np.ndarray:
  """Vertical stripes of the given classes."""
  label = np.zeros((height, width), np.uint8)
  for stripe, class_id in enumerate(classes):
    label[:, stripe * width // len(classes):] = class_id
  return label


def _write_label(path, label: np.ndarray, palette: bool) -> None:
  """A PNG of raw ids: mode 'P' (as VOC's own labels) or mode 'L' (as SBD's)."""
  image = Image.fromarray(label)
  if palette:
    image = image.convert("P")  # identity on indices from mode 'L'
    image.putpalette(VOC_PALETTE)
  image.save(path)


@pytest.fixture
def voc_root(tmp_path):
  root = tmp_path / "VOC2012"
  for directory in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
    (root / directory).mkdir(parents=True)
  for number, (name, (height, width, colour, classes)) in enumerate(IMAGES.items()):
    image = np.empty((height, width, 3), np.uint8)
    image[...] = colour
    Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
    _write_label(root / "SegmentationClassAug" / f"{name}.png",
                 _label(height, width, classes), palette=number % 2 == 0)
  names = list(IMAGES)
  # train_aug: plain ids (with a blank trailing line); val: MiB's two-path form.
  (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(names) + "\n\n")
  (root / "ImageSets/Segmentation/val.txt").write_text("".join(
      f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n" for name in names[:2]))
  return root


def test_reads_images_and_labels(voc_root):
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  assert len(source) == 3 and source.num_classes == 21
  for index, (name, (height, width, colour, classes)) in enumerate(IMAGES.items()):
    sample = source[index]
    assert set(sample) == {"image", "label", "name"}
    assert sample["name"] == name
    assert sample["image"].shape == (height, width, 3) and sample["image"].dtype == np.uint8
    # JPEG is lossy: a solid colour comes back within a few levels.
    np.testing.assert_allclose(sample["image"].reshape(-1, 3).mean(0), colour, atol=6)
    assert sample["label"].dtype == np.uint8
    np.testing.assert_array_equal(sample["label"], _label(height, width, classes))
    np.testing.assert_array_equal(source.read_label(index), sample["label"])


def test_two_path_list_format(voc_root):
  source = voc.VOCSegmentation(str(voc_root), "val")
  assert len(source) == 2
  assert [source.name(i) for i in range(2)] == ["2007_000032", "2007_000039"]
  np.testing.assert_array_equal(source[1]["label"], _label(16, 10, (0, 15)))


def test_index_out_of_range(voc_root):
  source = voc.VOCSegmentation(str(voc_root), "val")
  with pytest.raises(IndexError):
    source[2]


def test_missing_root_says_what_to_do(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError) as error:
    voc.VOCSegmentation(str(missing), "train_aug")
  message = str(error.value)
  assert str(missing) in message
  assert "SegmentationClassAug" in message and "train_aug.txt" in message
  assert "python -m gsc_jax.main --config=configs/synthetic.py:15-1" in message
  assert "python -m gsc_jax.tools.write_synthetic_voc --out=DIR" in message


def test_missing_list_file(voc_root):
  with pytest.raises(FileNotFoundError, match="test.txt"):
    voc.VOCSegmentation(str(voc_root), "test")


def test_empty_list_file(voc_root):
  (voc_root / "ImageSets/Segmentation/empty.txt").write_text("\n")
  with pytest.raises(ValueError, match="empty.txt"):
    voc.VOCSegmentation(str(voc_root), "empty")


def test_malformed_list_line(voc_root):
  (voc_root / "ImageSets/Segmentation/bad.txt").write_text("a b c\n")
  with pytest.raises(ValueError, match="bad.txt:1"):
    voc.VOCSegmentation(str(voc_root), "bad")


def test_missing_image(voc_root):
  os.remove(voc_root / "JPEGImages" / "2007_000039.jpg")
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(FileNotFoundError, match="2007_000039.jpg"):
    source[1]
  with pytest.raises(FileNotFoundError, match="2007_000039.jpg"):
    source.read_label(1)
  source[0]  # the other images still read


def test_missing_label(voc_root):
  os.remove(voc_root / "SegmentationClassAug" / "2008_000001.png")
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(FileNotFoundError, match="2008_000001.png"):
    source[2]


def test_corrupt_jpeg(voc_root):
  (voc_root / "JPEGImages" / "2007_000032.jpg").write_bytes(b"this is not a jpeg" * 10)
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(ValueError, match="2007_000032.jpg"):
    source[0]


def test_truncated_jpeg(voc_root):
  path = voc_root / "JPEGImages" / "2007_000039.jpg"
  path.write_bytes(path.read_bytes()[:200])
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(ValueError, match="2007_000039.jpg"):
    source[1]


def test_corrupt_label(voc_root):
  (voc_root / "SegmentationClassAug" / "2007_000032.png").write_bytes(b"\x89PNG garbage")
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(ValueError, match="2007_000032.png"):
    source.read_label(0)


@pytest.mark.parametrize("palette", [True, False])
def test_label_value_out_of_range(voc_root, palette):
  _write_label(voc_root / "SegmentationClassAug" / "2007_000039.png",
               _label(16, 10, (0, 40)), palette=palette)
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  for read in (source.__getitem__, source.read_label):
    with pytest.raises(ValueError, match=r"2007_000039\.png.*\[40\]"):
      read(1)


def test_fewer_classes_makes_higher_ids_invalid(voc_root):
  source = voc.VOCSegmentation(str(voc_root), "train_aug", num_classes=16)
  source.read_label(1)  # ids 0 and 15 are valid
  with pytest.raises(ValueError, match=r"2008_000001\.png.*\[20\]"):
    source.read_label(2)


def test_colour_label_is_rejected(voc_root):
  colour_label = np.zeros((12, 16, 3), np.uint8)
  colour_label[:, 8:] = (128, 0, 0)  # VOC's colour of class 1
  Image.fromarray(colour_label).save(voc_root / "SegmentationClassAug" / "2007_000032.png")
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(ValueError, match=r"2007_000032\.png.*converted to class ids"):
    source[0]


def test_label_of_a_different_size(voc_root):
  _write_label(voc_root / "SegmentationClassAug" / "2007_000032.png",
               _label(12, 15, (0, 1)), palette=False)
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(ValueError, match=r"2007_000032\.png.*12x15"):
    source[0]
  with pytest.raises(ValueError, match=r"2007_000032\.png.*12x15"):
    source.read_label(0)


def test_works_with_the_eval_preprocessing(voc_root):
  from gsc_jax.data import transforms

  sample = voc.VOCSegmentation(str(voc_root), "val")[0]
  out = transforms.EvalPreprocess(crop_size=8).map(sample)
  assert out["image"].shape == (8, 8, 3) and out["label"].shape == (8, 8)
  assert set(np.unique(out["label"]).tolist()) <= {0, 1, 255}


def test_image_and_label_paths(voc_root):
  source = voc.VOCSegmentation(str(voc_root), "val")
  assert source.image_path(1) == os.path.join(str(voc_root), "JPEGImages", "2007_000039.jpg")
  assert source.label_path(1) == os.path.join(str(voc_root), "SegmentationClassAug",
                                              "2007_000039.png")
  assert repr(source) == (f"VOCSegmentation(root={str(voc_root)!r}, split='val', "
                          "num_images=2, num_classes=21)")


def test_fingerprint(voc_root):
  fingerprint = voc.VOCSegmentation(str(voc_root), "train_aug").fingerprint()
  assert len(fingerprint) == 64
  assert voc.VOCSegmentation(str(voc_root), "train_aug").fingerprint() == fingerprint
  assert voc.VOCSegmentation(str(voc_root), "train_aug",
                             num_classes=20).fingerprint() != fingerprint

  label_path = voc_root / "SegmentationClassAug" / "2007_000039.png"
  size_before = os.path.getsize(label_path)
  noisy = np.random.default_rng(0).integers(0, 21, size=(16, 10), dtype=np.uint8)
  _write_label(label_path, noisy, palette=False)
  assert os.path.getsize(label_path) != size_before
  changed_label = voc.VOCSegmentation(str(voc_root), "train_aug").fingerprint()
  assert changed_label != fingerprint

  list_path = voc_root / "ImageSets/Segmentation/train_aug.txt"
  list_path.write_text("2007_000032\n2008_000001\n")  # one image fewer
  assert voc.VOCSegmentation(str(voc_root), "train_aug").fingerprint() != changed_label


def test_fingerprint_names_a_missing_label(voc_root):
  os.remove(voc_root / "SegmentationClassAug" / "2008_000001.png")
  source = voc.VOCSegmentation(str(voc_root), "train_aug")
  with pytest.raises(FileNotFoundError, match=r"2008_000001\.png.*train_aug\.txt"):
    source.fingerprint()

"""The embedded synthetic dataset: determinism, label contents, class design, VOC writer."""

import os

import numpy as np
import pytest
from PIL import Image

from gsc_jax.data import synthetic
from gsc_jax.tools import write_synthetic_voc

SIZE = 64  # small images keep the tests fast; the generator scales with the size


def _source(split="train", num_images=300, **kwargs):
  kwargs.setdefault("image_size", SIZE)
  return synthetic.SyntheticSegmentation(split, num_images, **kwargs)


def _foreground_classes(label):
  values = np.unique(label)
  return values[(values != 0) & (values != synthetic.VOID_LABEL)]


def test_same_index_is_identical_and_seeds_differ():
  first, again = _source(seed=3), _source(seed=3)
  for index in (0, 7, 299):
    a, b = first[index], again[index]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], first[index]["image"])  # same object, again
    assert a["name"] == b["name"]
  other_seed, other_split = _source(seed=4), _source("val", seed=3)
  for other in (other_seed, other_split):
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    assert not all(np.array_equal(first.read_label(i), other.read_label(i)) for i in range(5))


def test_shapes_dtypes_and_names():
  source = _source(num_images=5, image_size=48)
  assert len(source) == 5 and source.num_classes == 21
  sample = source[4]
  assert sample["image"].shape == (48, 48, 3) and sample["image"].dtype == np.uint8
  assert sample["label"].shape == (48, 48) and sample["label"].dtype == np.uint8
  assert sample["name"] == "synth_train_000004"
  assert _source("val", num_images=50)[45]["name"] == "synth_val_000045"
  np.testing.assert_array_equal(source.read_label(4), sample["label"])


@pytest.mark.parametrize("num_classes", [2, 21, 151, 255])
def test_label_values_in_range(num_classes):
  source = _source(num_images=40, num_classes=num_classes)
  for index in range(len(source)):
    values = np.unique(source.read_label(index))
    assert np.all((values < num_classes) | (values == synthetic.VOID_LABEL)), values
  assert source[0]["image"].shape == (SIZE, SIZE, 3)


def test_every_class_appears_and_images_hold_several_classes():
  source = _source(num_images=300)
  classes_per_image = [_foreground_classes(source.read_label(i)) for i in range(len(source))]
  seen = set(np.concatenate(classes_per_image).tolist())
  assert seen == set(range(1, 21))
  counts = np.array([len(classes) for classes in classes_per_image])
  assert counts.min() >= 1 and counts.max() <= 3
  assert np.mean(counts > 1) > 0.3  # co-occurrence is what creates the background shift


def test_void_border_separates_every_contour():
  source = _source(num_images=30)
  for index in range(len(source)):
    _, objects, masks, void_width = source.layout(index)
    assert void_width in (1, 2)
    label = source.read_label(index)
    clean = synthetic.render_label(objects, masks, 0, SIZE)  # no void border
    void = label == synthetic.VOID_LABEL
    assert void.any() and ((label != 0) & ~void).any()
    assert not (clean == synthetic.VOID_LABEL).any()
    # Void only replaces labels, and only on contours of the clean label.
    np.testing.assert_array_equal(label[~void], clean[~void])
    on_contour = np.zeros_like(void)
    for axis in (0, 1):
      differs = np.diff(clean.astype(int), axis=axis) != 0
      if axis == 0:
        on_contour[1:] |= differs
        on_contour[:-1] |= differs
      else:
        on_contour[:, 1:] |= differs
        on_contour[:, :-1] |= differs
    assert not (void & ~on_contour).any(), f"image {index}: void away from contours"
    # No two 4-neighbours with different classes touch without void between them.
    for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
      touching = (a != b) & (a != synthetic.VOID_LABEL) & (b != synthetic.VOID_LABEL)
      assert not touching.any(), f"image {index}: classes touch without a void border"


def test_attribute_combinations_are_unique_and_shared():
  for num_classes in (2, 21, 151, 255):
    attributes = synthetic.class_attributes(num_classes)
    assert attributes.shape == (num_classes - 1, 3)
    assert len({tuple(row) for row in attributes.tolist()}) == num_classes - 1
    descriptions = synthetic.describe_classes(num_classes)
    assert len(descriptions) == num_classes and descriptions[0] == "background"
    assert len(set(descriptions)) == num_classes
  voc = synthetic.class_attributes(21)
  for column, values in enumerate((synthetic.SHAPES, synthetic.COLOUR_NAMES,
                                   synthetic.TEXTURES)):
    # Every attribute value is used, and reused by several classes (confusable classes).
    assert set(voc[:, column].tolist()) == set(range(len(values)))
    assert np.bincount(voc[:, column]).max() >= 2
  # The same class looks the same whatever the number of classes.
  np.testing.assert_array_equal(synthetic.class_attributes(151)[:20], voc)
  assert synthetic.describe_classes(21)[1] == "red solid ellipse"
  for bad in (1, 256):
    with pytest.raises(ValueError, match="num_classes"):
      synthetic.class_attributes(bad)


def test_objects_show_their_class_colour():
  source = _source(num_images=40)
  attributes = synthetic.class_attributes(21)
  for index in range(len(source)):
    sample = source[index]
    for class_id in _foreground_classes(sample["label"]):
      pixels = sample["image"][sample["label"] == class_id].astype(np.float32)
      # Textures alternate the colour with a dark shade: the brighter pixels carry it.
      bright = pixels[pixels.sum(axis=1) >= np.median(pixels.sum(axis=1))]
      expected = synthetic.PALETTE[attributes[class_id - 1, 1]]
      assert np.abs(np.median(bright, axis=0) - expected).max() < 60, (index, class_id)


def test_bad_arguments():
  with pytest.raises(ValueError, match="train, val"):
    synthetic.SyntheticSegmentation("test", 10)
  source = _source(num_images=3)
  for bad_index in (3, -1, 100):
    with pytest.raises(IndexError):
      source[bad_index]
    with pytest.raises(IndexError):
      source.read_label(bad_index)


def test_voc_layout_round_trip(tmp_path, capsys):
  root = str(tmp_path / "voc")
  write_synthetic_voc.main([f"--out={root}", "--num_train=3", "--num_val=2",
                            f"--image_size={SIZE}", "--seed=5"])
  assert "Wrote" in capsys.readouterr().out
  list_dir = os.path.join(root, "ImageSets", "Segmentation")
  with open(os.path.join(list_dir, "train_aug.txt")) as list_file:
    train_names = list_file.read().split()
  with open(os.path.join(list_dir, "val.txt")) as list_file:
    val_names = list_file.read().split()
  assert train_names == [f"synth_train_{i:06d}" for i in range(3)]
  assert val_names == ["synth_val_000000", "synth_val_000001"]
  for split, names in (("train", train_names), ("val", val_names)):
    source = synthetic.SyntheticSegmentation(split, len(names), image_size=SIZE, seed=5)
    for index, name in enumerate(names):
      sample = source[index]
      with Image.open(os.path.join(root, "SegmentationClassAug", name + ".png")) as png:
        assert png.mode in ("L", "P")
        np.testing.assert_array_equal(np.asarray(png), sample["label"])
      with Image.open(os.path.join(root, "JPEGImages", name + ".jpg")) as jpeg:
        assert jpeg.mode == "RGB" and jpeg.format == "JPEG"
        pixels = np.asarray(jpeg).astype(np.float32)
      assert np.abs(pixels - sample["image"]).mean() < 6  # lossy, but the same image

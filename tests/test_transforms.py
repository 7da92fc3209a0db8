"""Per-example augmentation and evaluation preprocessing (docs/algorithm.md 1.7)."""

import numpy as np
import pytest

from gsc_jax.data import transforms


def _coordinate_pair(height: int, width: int):
  """An image and a label whose values encode the pixel position.

  The label holds the column index (so a crop's columns can be read back from it), the
  image's red channel the column, green the row, blue a constant.
  """
  rows, columns = np.mgrid[0:height, 0:width]
  image = np.stack([columns % 256, rows % 256, np.full_like(rows, 77)], axis=-1)
  label = (columns % 250).astype(np.uint8)
  return image.astype(np.uint8), label


def _block_label(height: int, width: int) -> np.ndarray:
  """Four class blocks (1, 2, 3, void) on a background of 0."""
  label = np.zeros((height, width), np.uint8)
  label[: height // 2, : width // 2] = 1
  label[height // 2:, width // 2:] = 2
  label[: height // 4, width // 2:] = 3
  label[height - 3:, : width // 4] = 255
  return label


# ---------------------------------------------------------------------------------------
# Random resized crop.


def test_random_resized_crop_shapes_and_dtypes():
  image, _ = _coordinate_pair(37, 53)
  label = _block_label(37, 53)
  rng = np.random.default_rng(0)
  for _ in range(20):
    out_image, out_label = transforms.random_resized_crop(image, label, 24, rng)
    assert out_image.shape == (24, 24, 3) and out_image.dtype == np.uint8
    assert out_label.shape == (24, 24) and out_label.dtype == np.uint8


def test_random_resized_crop_label_values_are_a_subset():
  # Nearest-neighbour resizing never invents ids between neighbouring classes.
  label = _block_label(60, 80)
  image = np.zeros((60, 80, 3), np.uint8)
  rng = np.random.default_rng(1)
  seen = set()
  for _ in range(30):
    _, out_label = transforms.random_resized_crop(image, label, 33, rng)
    values = set(np.unique(out_label).tolist())
    assert values <= {0, 1, 2, 3, 255}
    seen |= values
  assert len(seen) >= 3  # the crops really come from different places


def test_random_resized_crop_is_reproducible_with_the_same_seed():
  image, label = _coordinate_pair(50, 70)
  first = transforms.random_resized_crop(image, label, 16, np.random.default_rng(7))
  again = transforms.random_resized_crop(image, label, 16, np.random.default_rng(7))
  other = transforms.random_resized_crop(image, label, 16, np.random.default_rng(8))
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[0], other[0])


def test_sample_crop_box_fits_and_respects_the_ranges():
  rng = np.random.default_rng(2)
  for _ in range(200):
    top, left, height, width = transforms.sample_crop_box(
        100, 120, rng, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3))
    assert 0 <= top and top + height <= 100
    assert 0 <= left and left + width <= 120
    if (height, width) != (100, 120):  # not the fallback
      # Rounding of each side moves the ratio by at most about one pixel.
      assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05
      assert 0.5 * 12000 * 0.9 <= height * width <= 12000


def test_fallback_is_a_centre_crop_clamped_to_the_ratio():
  # 10 x 200: any box with area 2000 and aspect in [3/4, 4/3] is ~40-50 px tall, so all
  # attempts fail; the fallback keeps the height and cuts a 4/3 wide window:
  # width round(10 * 4/3) = 13, left (200 - 13) // 2 = 93.
  image, label = _coordinate_pair(10, 200)
  box = transforms.sample_crop_box(10, 200, np.random.default_rng(0), scale=(1.0, 1.0))
  assert box == (0, 93, 10, 13)
  out_image, out_label = transforms.random_resized_crop(
      image, label, 13, np.random.default_rng(0), scale=(1.0, 1.0))
  # Widths are equal (13 -> 13), so nearest keeps each column: columns 93..105.
  expected_columns = np.arange(93, 106, dtype=np.uint8)
  np.testing.assert_array_equal(out_label, np.broadcast_to(expected_columns, (13, 13)))
  np.testing.assert_array_equal(out_image[..., 0], np.broadcast_to(expected_columns, (13, 13)))


def test_fallback_for_a_tall_image_keeps_the_width():
  # 200 x 10: keep width 10, height round(10 / (3/4)) = 13, top (200 - 13) // 2 = 93.
  box = transforms.sample_crop_box(200, 10, np.random.default_rng(0), scale=(1.0, 1.0))
  assert box == (93, 0, 13, 10)


# ---------------------------------------------------------------------------------------
# Flip and normalisation.


def test_horizontal_flip_flips_image_and_label_together():
  image, label = _coordinate_pair(6, 9)
  flipped_image, flipped_label = transforms.horizontal_flip(
      image, label, np.random.default_rng(0), probability=1.0)
  np.testing.assert_array_equal(flipped_image, image[:, ::-1])
  np.testing.assert_array_equal(flipped_label, label[:, ::-1])
  same_image, same_label = transforms.horizontal_flip(
      image, label, np.random.default_rng(0), probability=0.0)
  np.testing.assert_array_equal(same_image, image)
  np.testing.assert_array_equal(same_label, label)


def test_horizontal_flip_probability_is_about_one_half():
  image, label = _coordinate_pair(2, 3)
  rng = np.random.default_rng(3)
  flips = sum(
      not np.array_equal(transforms.horizontal_flip(image, label, rng)[1], label)
      for _ in range(400))
  assert 150 < flips < 250


def test_normalize_values():
  image = np.array([[[0, 0, 0], [255, 255, 255], [124, 116, 104]]], np.uint8)
  normalized = transforms.normalize(image)
  assert normalized.dtype == np.float32 and normalized.shape == (1, 3, 3)
  mean, std = np.array(transforms.IMAGENET_MEAN), np.array(transforms.IMAGENET_STD)
  np.testing.assert_allclose(normalized[0, 0], -mean / std, rtol=1e-6)
  np.testing.assert_allclose(normalized[0, 1], (1 - mean) / std, rtol=1e-6)
  # 124/255, 116/255, 104/255 are close to the mean: values near zero.
  np.testing.assert_allclose(normalized[0, 2], (np.array([124, 116, 104]) / 255 - mean) / std,
                             atol=1e-6)
  assert np.all(np.abs(normalized[0, 2]) < 0.02)


# ---------------------------------------------------------------------------------------
# Evaluation preprocessing.


@pytest.mark.parametrize("height, width, resized", [
    (375, 500, (32, 42)),   # landscape: 32 * 500 / 375 = 42.67, truncated like torchvision
    (500, 375, (42, 32)),   # portrait
    (40, 40, (32, 32)),     # square
])
def test_resize_shorter_side_and_eval_crop_shapes(height, width, resized):
  image = np.zeros((height, width, 3), np.uint8)
  label = _block_label(height, width)
  resized_image, resized_label = transforms.resize_shorter_side(image, label, 32)
  assert resized_image.shape == resized + (3,) and resized_label.shape == resized
  cropped_image, cropped_label = transforms.eval_resize_center_crop(image, label, 32)
  assert cropped_image.shape == (32, 32, 3) and cropped_image.dtype == np.uint8
  assert cropped_label.shape == (32, 32) and cropped_label.dtype == np.uint8
  assert set(np.unique(cropped_label).tolist()) <= {0, 1, 2, 3, 255}


def test_center_crop_takes_the_middle():
  image, label = _coordinate_pair(10, 20)
  out_image, out_label = transforms.center_crop(image, label, 6)
  # top round(4 / 2) = 2, left round(14 / 2) = 7.
  np.testing.assert_array_equal(out_label, label[2:8, 7:13])
  np.testing.assert_array_equal(out_image, image[2:8, 7:13])


def test_center_crop_pads_small_images_with_void():
  image = np.full((2, 3, 3), 200, np.uint8)
  label = np.ones((2, 3), np.uint8)
  out_image, out_label = transforms.center_crop(image, label, 5)
  assert out_image.shape == (5, 5, 3) and out_label.shape == (5, 5)
  # Padding 3 rows (1 top, 2 bottom) and 2 columns (1 left, 1 right).
  expected_label = np.full((5, 5), 255, np.uint8)
  expected_label[1:3, 1:4] = 1
  np.testing.assert_array_equal(out_label, expected_label)
  assert np.all(out_image[1:3, 1:4] == 200)
  assert np.all(out_image[out_label == 255] == 0)


def test_pad_to_size_pads_bottom_right():
  image, label = _coordinate_pair(3, 4)
  padded_image, padded_label = transforms.pad_to_size(image, label, 5, 6)
  assert padded_image.shape == (5, 6, 3) and padded_label.shape == (5, 6)
  np.testing.assert_array_equal(padded_image[:3, :4], image)
  np.testing.assert_array_equal(padded_label[:3, :4], label)
  assert np.all(padded_label[3:] == 255) and np.all(padded_label[:, 4:] == 255)
  assert np.all(padded_image[3:] == 0) and np.all(padded_image[:, 4:] == 0)


def test_pad_to_size_rejects_a_larger_image():
  image, label = _coordinate_pair(7, 4)
  with pytest.raises(ValueError, match="eval_size"):
    transforms.pad_to_size(image, label, 5, 6)


# ---------------------------------------------------------------------------------------
# grain transforms.


def _element(height=30, width=40):
  image, _ = _coordinate_pair(height, width)
  return {"image": image, "label": _block_label(height, width), "name": "2007_000032"}


def test_train_augment_on_an_element():
  augment = transforms.TrainAugment(16, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3),
                                    flip_probability=0.5)
  element = _element()
  out = augment.random_map(element, np.random.default_rng(0))
  assert set(out) == {"image", "label"}  # "name" dropped so batches are plain arrays
  assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.float32
  assert out["label"].shape == (16, 16) and out["label"].dtype == np.uint8
  assert set(np.unique(out["label"]).tolist()) <= {0, 1, 2, 3, 255}
  # Normalised: the blue channel is 77 everywhere, which bilinear resampling keeps.
  np.testing.assert_allclose(out["image"][..., 2], (77 / 255 - 0.406) / 0.225, rtol=1e-5)
  again = augment.random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(out["image"], again["image"])
  np.testing.assert_array_equal(out["label"], again["label"])
  assert element["image"].dtype == np.uint8  # the input element is left untouched


def test_train_augment_rejects_bad_elements_by_name():
  element = _element()
  element["label"] = element["label"][:, :-1]
  with pytest.raises(ValueError, match="2007_000032"):
    transforms.TrainAugment(16).random_map(element, np.random.default_rng(0))


def test_eval_preprocess_center_crop():
  out = transforms.EvalPreprocess(crop_size=20).map(_element(30, 40))
  assert set(out) == {"image", "label"}
  assert out["image"].shape == (20, 20, 3) and out["image"].dtype == np.float32
  assert out["label"].shape == (20, 20) and out["label"].dtype == np.uint8


def test_eval_preprocess_full_image_with_padding():
  element = _element(30, 40)
  out = transforms.EvalPreprocess(crop_size=None, pad_to=(48, 48)).map(element)
  assert out["image"].shape == (48, 48, 3) and out["label"].shape == (48, 48)
  np.testing.assert_array_equal(out["label"][:30, :40], element["label"])
  np.testing.assert_allclose(out["image"][:30, :40], transforms.normalize(element["image"]))
  assert np.all(out["image"][30:] == 0) and np.all(out["label"][30:] == 255)
  unpadded = transforms.EvalPreprocess(crop_size=None).map(element)
  assert unpadded["image"].shape == (30, 40, 3)


def test_grain_pipeline_runs_the_transforms():
  import grain

  elements = [_element(30 + i, 40) for i in range(4)]
  dataset = (grain.MapDataset.source(elements).seed(0)
             .random_map(transforms.TrainAugment(12)).batch(2))
  batch = dataset[0]
  assert batch["image"].shape == (2, 12, 12, 3) and batch["label"].shape == (2, 12, 12)
  np.testing.assert_array_equal(dataset[1]["image"], dataset[1]["image"])  # reproducible

"""Per-example augmentation and evaluation preprocessing (docs/algorithm.md 1.7).

Every function takes an image (uint8 [H, W, 3] RGB) and, where geometry changes, its
label (uint8 [H, W] class ids, 255 = void) and returns new arrays; the inputs are never
modified. Randomness comes only from the ``np.random.Generator`` passed in: grain's
``random_map`` hands one per element, derived from the dataset seed and the element's
position, so an augmented epoch is reproducible.

Geometry follows torchvision with the PIL backend, which the published MiB / PLOP code
used: images are resampled bilinearly (PIL's filter, which antialiases when shrinking),
labels with nearest neighbour so that no new class id is invented at object borders.

Train:  random_resized_crop -> horizontal_flip -> normalize          (TrainAugment)
Eval:   eval_resize_center_crop -> normalize                          (EvalPreprocess)
        or the full image -> normalize -> pad_to_size                 (EvalPreprocess)
"""

import math

import grain
import numpy as np
from PIL import Image

from gsc_jax.tasks import IGNORE_LABEL
from gsc_jax import errors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Image value used for padding uint8 images (black), as torchvision's default fill.
IMAGE_PAD_VALUE = 0


# ---------------------------------------------------------------------------------------
# Small helpers.


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
  """Raises ValueError unless ``image`` is [H, W, 3] and ``label`` is [H, W]."""
  if image.ndim != 3 or image.shape[2] != 3:
    raise errors.InputError(f"expected an RGB image of shape [H, W, 3], got shape {image.shape}")
  if label.ndim != 2 or label.shape != image.shape[:2]:
    raise errors.InputError(f"expected a label of shape {image.shape[:2]} (the image's height and "
                     f"width), got shape {label.shape}")


def _resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 RGB image to [height, width, 3] (PIL)."""
  resized = Image.fromarray(image).resize((width, height), Image.BILINEAR)
  return np.asarray(resized, dtype=np.uint8)


def _resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of a uint8 label to [height, width] (PIL, values kept)."""
  resized = Image.fromarray(label).resize((width, height), Image.NEAREST)
  return np.asarray(resized, dtype=np.uint8)


def _pad(array: np.ndarray, top: int, bottom: int, left: int, right: int,
         value) -> np.ndarray:
  """Constant padding of the first two (spatial) axes."""
  padding = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
  return np.pad(array, padding, mode="constant", constant_values=value)


# ---------------------------------------------------------------------------------------
# Train augmentation.


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3),
                    attempts: int = 10) -> tuple[int, int, int, int]:
  """The (top, left, crop_height, crop_width) of a random resized crop.

  torchvision ``RandomResizedCrop.get_params``: each attempt draws an area fraction
  uniformly in ``scale`` and an aspect ratio (width / height) log-uniformly in ``ratio``,
  and is accepted if the box fits in the image; with scale up to 2.0 only the draws with
  a fraction of at most about 1 can fit. After ``attempts`` failures the fallback is a
  centre crop of the whole image, narrowed to the nearest aspect ratio in ``ratio``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    crop_width = int(round(math.sqrt(target_area * aspect)))
    crop_height = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      # Upper bounds are exclusive: every position where the box fits is possible.
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return top, left, crop_height, crop_width
  return _fallback_crop_box(height, width, ratio)


def _fallback_crop_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
  """Centre crop of the whole image, clamped to the aspect ratio range (torchvision)."""
  image_ratio = width / height
  if image_ratio < min(ratio):  # too tall: keep the width, cut the height
    crop_width = width
    crop_height = int(round(crop_width / min(ratio)))
  elif image_ratio > max(ratio):  # too wide: keep the height, cut the width
    crop_height = height
    crop_width = int(round(crop_height * max(ratio)))
  else:
    crop_height, crop_width = height, width
  top = (height - crop_height) // 2
  left = (width - crop_width) // 2
  return top, left, crop_height, crop_width


def random_resized_crop(image: np.ndarray, label: np.ndarray, crop_size: int,
                        rng: np.random.Generator, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3),
                        attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """A random box (see ``sample_crop_box``) resized to ``crop_size`` x ``crop_size``.

  The image is resized bilinearly, the label with nearest neighbour, so the output label
  only holds values present in the input label.
  """
  _check_pair(image, label)
  height, width = label.shape
  top, left, crop_height, crop_width = sample_crop_box(height, width, rng, scale, ratio,
                                                       attempts)
  image_crop = image[top:top + crop_height, left:left + crop_width]
  label_crop = label[top:top + crop_height, left:left + crop_width]
  return (_resize_image(np.ascontiguousarray(image_crop), crop_size, crop_size),
          _resize_label(np.ascontiguousarray(label_crop), crop_size, crop_size))


def horizontal_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                    probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors image and label left-right together with the given probability."""
  # One draw per call whatever the outcome, so later draws do not depend on it.
  if rng.random() < probability:
    return (np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1]))
  return image, label


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 ``(image / 255 - IMAGENET_MEAN) / IMAGENET_STD``, [H, W, 3]."""
  mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
  std = np.asarray(IMAGENET_STD, dtype=np.float32)
  return (image.astype(np.float32) / np.float32(255.0) - mean) / std


# ---------------------------------------------------------------------------------------
# Evaluation preprocessing.


def resized_shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """Output (height, width) when the shorter side becomes ``size``, aspect kept.

  Like torchvision ``Resize(int)``, the longer side is ``int(size * long / short)``,
  i.e. truncated, not rounded (500 x 375 -> 682 x 512, not 683 x 512).
  """
  if height <= width:
    return size, int(size * width / height)
  return int(size * height / width), size


def resize_shorter_side(image: np.ndarray, label: np.ndarray,
                        size: int) -> tuple[np.ndarray, np.ndarray]:
  """Resizes so the shorter side is ``size`` (bilinear image, nearest label)."""
  _check_pair(image, label)
  new_height, new_width = resized_shorter_side_shape(*label.shape, size)
  return (_resize_image(image, new_height, new_width),
          _resize_label(label, new_height, new_width))


def center_crop(image: np.ndarray, label: np.ndarray,
                size: int) -> tuple[np.ndarray, np.ndarray]:
  """The central ``size`` x ``size`` window (torchvision ``CenterCrop`` positions).

  A side shorter than ``size`` is first padded evenly on both ends (the extra pixel of an
  odd difference on the bottom / right) with 0 in the image and 255 (ignored) in the
  label, so padded pixels never count in the metric. After ``resize_shorter_side`` to the
  same size no padding happens.
  """
  _check_pair(image, label)
  height, width = label.shape
  pad_height, pad_width = max(size - height, 0), max(size - width, 0)
  if pad_height or pad_width:
    pads = (pad_height // 2, pad_height - pad_height // 2,
            pad_width // 2, pad_width - pad_width // 2)
    image = _pad(image, *pads, value=IMAGE_PAD_VALUE)
    label = _pad(label, *pads, value=IGNORE_LABEL)
    height, width = label.shape
  # Python's round, as torchvision, so the offsets match its crops exactly.
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return (np.ascontiguousarray(image[top:top + size, left:left + size]),
          np.ascontiguousarray(label[top:top + size, left:left + size]))


def eval_resize_center_crop(image: np.ndarray, label: np.ndarray,
                            size: int) -> tuple[np.ndarray, np.ndarray]:
  """The published evaluation protocol: shorter side -> ``size``, centre crop square."""
  image, label = resize_shorter_side(image, label, size)
  return center_crop(image, label, size)


def pad_to_size(image: np.ndarray, label: np.ndarray, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads the bottom and right to [height, width] with 0 (image) and 255 (label).

  Works for uint8 and for normalised float images (where 0 is the mean colour). Used in
  full-image evaluation so images of different sizes stack into one batch; the padded
  pixels are ignored by the metric.
  """
  _check_pair(image, label)
  image_height, image_width = label.shape
  if image_height > height or image_width > width:
    raise errors.InputError(
        f"image of size {image_height}x{image_width} does not fit in the padded size "
        f"{height}x{width}; set data.eval_size to at least the largest image side "
        f"(or use data.eval_mode=center_crop)")
  pads = (0, height - image_height, 0, width - image_width)
  return _pad(image, *pads, value=0), _pad(label, *pads, value=IGNORE_LABEL)


# ---------------------------------------------------------------------------------------
# grain transforms.


def _element_pair(element) -> tuple[np.ndarray, np.ndarray]:
  """The image and label of a source element, with the element's name in any error."""
  image, label = np.asarray(element["image"]), np.asarray(element["label"])
  try:
    _check_pair(image, label)
    if image.dtype != np.uint8 or label.dtype != np.uint8:
      raise errors.InputError(f"expected uint8 image and label, got {image.dtype} and {label.dtype}")
  except ValueError as error:
    raise errors.InputError(f"element {element.get('name', '<unnamed>')!r}: {error}") from None
  return image, label


class TrainAugment(grain.transforms.RandomMap):
  """Random resized crop, horizontal flip and ImageNet normalisation of one element.

  Output: {"image": float32 [crop, crop, 3] normalised, "label": uint8 [crop, crop]};
  other keys (such as "name") are dropped so elements batch into plain arrays.
  """

  def __init__(self, crop_size: int, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3),
               flip_probability: float = 0.5):
    if crop_size <= 0:
      raise errors.InputError(f"crop_size must be positive, got {crop_size}")
    if not 0 < scale[0] <= scale[1]:
      raise errors.InputError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
      raise errors.InputError(f"ratio must be (low, high) with 0 < low <= high, got {ratio}")
    if not 0.0 <= flip_probability <= 1.0:
      raise errors.InputError(f"flip_probability must be in [0, 1], got {flip_probability}")
    self.crop_size = int(crop_size)
    self.scale = (float(scale[0]), float(scale[1]))
    self.ratio = (float(ratio[0]), float(ratio[1]))
    self.flip_probability = float(flip_probability)

  def random_map(self, element, rng: np.random.Generator):
    image, label = _element_pair(element)
    image, label = random_resized_crop(image, label, self.crop_size, rng,
                                       self.scale, self.ratio)
    image, label = horizontal_flip(image, label, rng, self.flip_probability)
    return {"image": normalize(image), "label": label}


class EvalPreprocess(grain.transforms.Map):
  """Deterministic evaluation preprocessing of one element.

  ``crop_size`` set: the published protocol (shorter side -> crop_size, centre crop).
  ``crop_size`` None: the full image; with ``pad_to=(height, width)`` it is padded at
  the bottom / right (image with 0 after normalisation, i.e. the mean colour, label with
  255) so that images of different sizes stack into a batch.
  Output: {"image": float32 normalised [.., .., 3], "label": uint8}; other keys dropped.
  """

  def __init__(self, crop_size: int | None, pad_to: tuple[int, int] | None = None):
    if crop_size is not None and crop_size <= 0:
      raise errors.InputError(f"crop_size must be positive or None, got {crop_size}")
    if crop_size is not None and pad_to is not None:
      raise errors.InputError("pad_to applies to full-image evaluation only (crop_size=None); "
                       f"got crop_size={crop_size} and pad_to={pad_to}")
    self.crop_size = crop_size
    self.pad_to = None if pad_to is None else (int(pad_to[0]), int(pad_to[1]))

  def map(self, element):
    image, label = _element_pair(element)
    if self.crop_size is not None:
      image, label = eval_resize_center_crop(image, label, self.crop_size)
    image = normalize(image)
    if self.pad_to is not None:
      # Padding after normalisation: padded pixels look like the mean colour to the network.
      image, label = pad_to_size(image, label, *self.pad_to)
    return {"image": image, "label": label}

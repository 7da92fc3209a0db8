"""Writers of small dataset trees in the real on-disk layouts, for the tests.

Every writer generates deterministic images (smooth random colour ramps, so JPEG keeps
them close to the generated pixels) and labels made of vertical stripes of chosen class
ids, and returns what it wrote so the tests can compare pixel arrays. The tree writers
return ``{"train": [names], "val": [names], "images": {name: uint8 [H, W, 3]},
"labels": {name: uint8 [H, W] raw label values}}`` (the split keys follow the dataset:
"training"/"validation" for ADE20K); ``write_voc_sbd_originals`` returns the labels of
each release.
"""

import os

import numpy as np
import scipy.io
from PIL import Image

VOID = 255
DEFAULT_SIZE = (48, 64)  # (height, width)
# labelIds written into every Cityscapes label: 0 and 1 map to void, 7 road, 8 sidewalk,
# 26 car.
CITYSCAPES_LABEL_IDS = (0, 1, 7, 8, 26)


def voc_palette() -> list[int]:
  """The Pascal VOC colour map as a flat 768-value PIL palette (index -> colour)."""
  palette = []
  for index in range(256):
    red = green = blue = 0
    bits = index
    for shift in range(7, -1, -1):
      red |= (bits & 1) << shift
      green |= ((bits >> 1) & 1) << shift
      blue |= ((bits >> 2) & 1) << shift
      bits >>= 3
    palette += [red, green, blue]
  return palette


def smooth_image(rng: np.random.Generator, size=DEFAULT_SIZE) -> np.ndarray:
  """uint8 [H, W, 3]: a random base colour plus random horizontal/vertical ramps."""
  height, width = size
  base = rng.uniform(60, 190, size=3)
  slopes = rng.uniform(-50, 50, size=(2, 3))
  rows = np.linspace(0, 1, height)[:, None, None] * slopes[0]
  columns = np.linspace(0, 1, width)[None, :, None] * slopes[1]
  return np.clip(base + rows + columns, 0, 255).astype(np.uint8)


def stripe_label(values, size=DEFAULT_SIZE, void_border: bool = False) -> np.ndarray:
  """uint8 [H, W] of equal vertical stripes holding ``values`` in order, optionally with a
  one-pixel void (255) border."""
  height, width = size
  values = list(values)
  if not values or width // len(values) < 3:  # a void border must not cover a stripe
    raise ValueError(f"cannot draw {len(values)} stripes in a label {width} pixels wide")
  label = np.empty((height, width), np.uint8)
  for stripe, value in enumerate(values):
    label[:, stripe * width // len(values):] = value
  if void_border:
    label[[0, -1], :] = VOID
    label[:, [0, -1]] = VOID
  return label


def write_label_png(path, array: np.ndarray, mode: str) -> None:
  """Writes ``array`` (raw values) as an 8-bit PNG of PIL mode 'L' or 'P' (VOC palette)."""
  if mode not in ("L", "P"):
    raise ValueError(f"label mode must be 'L' or 'P', got {mode!r}")
  image = Image.fromarray(np.asarray(array, np.uint8))
  if mode == "P":
    image = image.convert("P")  # identity on the values of a mode 'L' image
    image.putpalette(voc_palette())
  image.save(path)


def write_image(path, image: np.ndarray) -> None:
  """Writes an RGB image; JPEG (quality 95, no chroma subsampling) or PNG by extension."""
  if str(path).endswith(".jpg"):
    Image.fromarray(image).save(path, quality=95, subsampling=0)
  else:
    Image.fromarray(image).save(path)


def corrupt_file(path) -> None:
  """Overwrites ``path`` with junk bytes (neither an image nor a .mat file)."""
  with open(path, "wb") as junk:
    junk.write(b"this file is corrupt junk, not an image " * 8)


def _rng(seed: int, number: int) -> np.random.Generator:
  """The generator of the ``number``-th image of a tree."""
  return np.random.default_rng([seed, number])


def _makedirs(*paths) -> None:
  """Creates every directory of ``paths`` (and its parents)."""
  for path in paths:
    os.makedirs(path, exist_ok=True)


def write_voc_tree(root, train_classes, val_classes, size=DEFAULT_SIZE, seed=0) -> dict:
  """A Pascal VOC "aug" tree: one image per entry of ``train_classes`` / ``val_classes``
  whose label holds background 0, exactly those class ids, and a void border.

  Ids are 2007_000001, 2007_000002, ... (train first, then val); train labels are mode 'L'
  PNGs (as SBD's), val labels mode 'P' (as VOC's). Writes train_aug.txt and val.txt.
  """
  image_dir = os.path.join(root, "JPEGImages")
  label_dir = os.path.join(root, "SegmentationClassAug")
  list_dir = os.path.join(root, "ImageSets", "Segmentation")
  _makedirs(image_dir, label_dir, list_dir)
  written = {"train": [], "val": [], "images": {}, "labels": {}}
  number = 0
  for split, classes_per_image, list_name, mode in (
      ("train", train_classes, "train_aug.txt", "L"), ("val", val_classes, "val.txt", "P")):
    for classes in classes_per_image:
      number += 1
      name = f"2007_{number:06d}"
      image = smooth_image(_rng(seed, number), size)
      label = stripe_label([0] + list(classes), size, void_border=True)
      write_image(os.path.join(image_dir, name + ".jpg"), image)
      write_label_png(os.path.join(label_dir, name + ".png"), label, mode)
      written[split].append(name)
      written["images"][name] = image
      written["labels"][name] = label
    with open(os.path.join(list_dir, list_name), "w") as list_file:
      list_file.writelines(name + "\n" for name in written[split])
  return written


def write_ade_tree(root, train_classes, val_classes, size=DEFAULT_SIZE, seed=0) -> dict:
  """An ADEChallengeData2016 tree: one image per entry of ``train_classes`` /
  ``val_classes`` whose 'L' annotation holds 0 ("other") and exactly those class ids.

  Names are ADE_train_00000001, ... and ADE_val_00000001, ...; returns them under the
  keys "training" and "validation".
  """
  written = {"training": [], "validation": [], "images": {}, "labels": {}}
  number = 0
  for split, prefix, classes_per_image in (("training", "ADE_train", train_classes),
                                           ("validation", "ADE_val", val_classes)):
    image_dir = os.path.join(root, "images", split)
    label_dir = os.path.join(root, "annotations", split)
    _makedirs(image_dir, label_dir)
    for index, classes in enumerate(classes_per_image, start=1):
      number += 1
      name = f"{prefix}_{index:08d}"
      image = smooth_image(_rng(seed, number), size)
      label = stripe_label([0] + list(classes), size)
      write_image(os.path.join(image_dir, name + ".jpg"), image)
      write_label_png(os.path.join(label_dir, name + ".png"), label, "L")
      written[split].append(name)
      written["images"][name] = image
      written["labels"][name] = label
  return written


def write_cityscapes_tree(root, train_cities: dict, val_cities: dict, size=(32, 64),
                          seed=0, label_ids=CITYSCAPES_LABEL_IDS) -> dict:
  """A Cityscapes tree (leftImg8bit + gtFine) with ``train_cities[city]`` /
  ``val_cities[city]`` PNG images per city; every labelIds PNG holds stripes of
  ``label_ids``. Names follow the official pattern <city>_<seq>_000019."""
  written = {"train": [], "val": [], "images": {}, "labels": {}}
  number = 0
  for split, cities in (("train", train_cities), ("val", val_cities)):
    for city, num_images in cities.items():
      image_dir = os.path.join(root, "leftImg8bit", split, city)
      label_dir = os.path.join(root, "gtFine", split, city)
      _makedirs(image_dir, label_dir)
      for sequence in range(num_images):
        number += 1
        name = f"{city}_{sequence:06d}_000019"
        image = smooth_image(_rng(seed, number), size)
        label = stripe_label(label_ids, size)
        write_image(os.path.join(image_dir, name + "_leftImg8bit.png"), image)
        write_label_png(os.path.join(label_dir, name + "_gtFine_labelIds.png"), label, "L")
        written[split].append(name)
        written["images"][name] = image
        written["labels"][name] = label
  return written


def voc_original_label(image_id: str, size=DEFAULT_SIZE) -> np.ndarray:
  """The VOC SegmentationClass label written for ``image_id``: 0, one class, void border."""
  class_id = 1 + int(image_id.replace("_", "")) % 20
  return stripe_label([0, class_id], size, void_border=True)


def sbd_original_label(image_id: str, size=DEFAULT_SIZE) -> np.ndarray:
  """The SBD label written for ``image_id``: 0 and two classes (different from VOC's),
  no void."""
  number = int(image_id.replace("_", ""))
  return stripe_label([0, 1 + (number + 7) % 20, 1 + (number + 13) % 20], size)


def write_sbd_mat(path, segmentation: np.ndarray) -> None:
  """Writes an SBD cls .mat: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
  categories = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
  boundaries = np.zeros_like(segmentation)
  boundaries[:, 1:] = segmentation[:, 1:] != segmentation[:, :-1]
  scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": boundaries,
                                    "CategoriesPresent": categories}})


def write_voc_sbd_originals(voc_root, sbd_root, voc_train, voc_val, sbd_train, sbd_val,
                            size=DEFAULT_SIZE, seed=0) -> dict:
  """The original releases read by ``gsc_jax.tools.build_voc_aug``: VOC 2012 (JPEGImages
  for every id, SegmentationClass palette PNGs with void borders for ``voc_train`` +
  ``voc_val``, the train/val lists) and SBD (dataset/cls/<id>.mat for ``sbd_train`` +
  ``sbd_val``, the train/val lists). Labels are ``voc_original_label`` / ``sbd_original_label``.

  Returns {"voc_labels": {id: array}, "sbd_labels": {id: array}, "images": {id: array}}.
  """
  voc_image_dir = os.path.join(voc_root, "JPEGImages")
  voc_label_dir = os.path.join(voc_root, "SegmentationClass")
  voc_list_dir = os.path.join(voc_root, "ImageSets", "Segmentation")
  sbd_dataset_dir = os.path.join(sbd_root, "dataset")
  sbd_label_dir = os.path.join(sbd_dataset_dir, "cls")
  _makedirs(voc_image_dir, voc_label_dir, voc_list_dir, sbd_label_dir)
  written = {"voc_labels": {}, "sbd_labels": {}, "images": {}}
  all_ids = sorted(set(voc_train) | set(voc_val) | set(sbd_train) | set(sbd_val))
  for number, image_id in enumerate(all_ids):
    image = smooth_image(_rng(seed, number), size)
    write_image(os.path.join(voc_image_dir, image_id + ".jpg"), image)
    written["images"][image_id] = image
  for image_id in sorted(set(voc_train) | set(voc_val)):
    label = voc_original_label(image_id, size)
    write_label_png(os.path.join(voc_label_dir, image_id + ".png"), label, "P")
    written["voc_labels"][image_id] = label
  for image_id in sorted(set(sbd_train) | set(sbd_val)):
    label = sbd_original_label(image_id, size)
    write_sbd_mat(os.path.join(sbd_label_dir, image_id + ".mat"), label)
    written["sbd_labels"][image_id] = label
  for list_path, ids in ((os.path.join(voc_list_dir, "train.txt"), voc_train),
                         (os.path.join(voc_list_dir, "val.txt"), voc_val),
                         (os.path.join(sbd_dataset_dir, "train.txt"), sbd_train),
                         (os.path.join(sbd_dataset_dir, "val.txt"), sbd_val)):
    with open(list_path, "w") as list_file:
      list_file.writelines(image_id + "\n" for image_id in ids)
  return written

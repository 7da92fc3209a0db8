"""Cityscapes fine annotations as a grain random-access source with the 19 train ids.

Expected tree under ``root`` (``data.root``):

  leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png        RGB images
  leftImg8bit/val/<city>/...
  gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png         8-bit labelIds 0..33
  gtFine/val/<city>/...

18 train cities and 3 val cities: the 21 of ``tasks.CITYSCAPES_CITIES``. The entries of a
split are every ``*_leftImg8bit.png`` of every city directory (cities sorted, files sorted);
the name of an entry is its ``<city>_<seq>_<frame>`` prefix. The labelIds are mapped to the
19 train ids by the official table (``LABEL_ID_TO_TRAIN_ID``, unmapped labelIds -> 255); a
raw value above 33 is an error naming the file.
"""

import os

import numpy as np

from gsc_jax.data import files
from gsc_jax.tasks import CITYSCAPES_CITIES, IGNORE_LABEL, LUT_SIZE
from gsc_jax import errors

IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val")
MAX_LABEL_ID = 33  # labelIds images hold 0..33

# The 19 train ids, in order (train id = position).
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
    "train", "motorcycle", "bicycle")

# The official labelId -> trainId table (cityscapesScripts labels.py) for every labelId
# 0..33; labelIds not used for training map to 255 (void).
LABEL_ID_TO_TRAIN_ID = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
}

EXPECTED_TREE = """\
  {root}/
    leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png     18 train cities
    leftImg8bit/val/<city>/...                                       3 val cities
    gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit labelIds 0..33
    gtFine/val/<city>/..."""


def label_id_lut() -> np.ndarray:
  """uint8 [256] mapping every labelId to its train id (255 for the unmapped ones)."""
  lut = np.full(LUT_SIZE, IGNORE_LABEL, np.uint8)
  for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
    lut[label_id] = train_id
  return lut


def _missing_root_message(root: str) -> str:
  """What to do when the dataset directory does not exist."""
  return (
      f"Cityscapes root directory not found: {os.path.abspath(root)!r} "
      f"(data.root={root!r}).\nExpected tree:\n{EXPECTED_TREE.format(root=root)}\n"
      "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
      "cityscapes-dataset.com, extract both into one directory and set data.root to it.")


def _require_directory(path: str, root: str) -> None:
  files.require_directory(
      path, "Cityscapes", EXPECTED_TREE.format(root=root),
      "Extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into data.root.")


def list_entries(root: str, split: str) -> tuple[list[tuple[str, str, str]], list[str]]:
  """The (name, image path, label path) of every image of ``split`` (cities sorted, files
  sorted) and the city of each. Errors name the missing file or the unknown city."""
  image_split_dir = os.path.join(root, IMAGE_DIR, split)
  label_split_dir = os.path.join(root, LABEL_DIR, split)
  _require_directory(image_split_dir, root)
  _require_directory(label_split_dir, root)
  city_names = sorted(city for city in os.listdir(image_split_dir)
                      if os.path.isdir(os.path.join(image_split_dir, city)))
  if not city_names:
    raise errors.MissingFileError(f"no city directories in {image_split_dir!r}; re-extract "
                            "leftImg8bit_trainvaltest.zip")
  entries, cities = [], []
  for city in city_names:
    image_dir = os.path.join(image_split_dir, city)
    if city not in CITYSCAPES_CITIES:
      raise errors.InputError(f"{image_dir!r} is not a Cityscapes city: {city!r} is not one of "
                       f"the 21 train+val cities {', '.join(CITYSCAPES_CITIES)}; remove "
                       "it from the tree")
    label_dir = os.path.join(label_split_dir, city)
    _require_directory(label_dir, root)
    image_names = sorted(file_name for file_name in os.listdir(image_dir)
                         if file_name.endswith(IMAGE_SUFFIX))
    if not image_names:
      raise errors.MissingFileError(f"no *{IMAGE_SUFFIX} images in city directory "
                              f"{image_dir!r}; re-extract leftImg8bit_trainvaltest.zip")
    for image_name in image_names:
      name = image_name[:-len(IMAGE_SUFFIX)]
      image_path = os.path.join(image_dir, image_name)
      label_path = os.path.join(label_dir, name + LABEL_SUFFIX)
      if not os.path.isfile(label_path):
        raise errors.MissingFileError(
            f"label of image {image_path!r} not found: {label_path!r}; every image needs "
            "its gtFine labelIds: re-extract gtFine_trainvaltest.zip")
      entries.append((name, image_path, label_path))
      cities.append(city)
  return entries, cities


class CityscapesSegmentation(files.FileSegmentation):
  """Random-access source over the Cityscapes fine annotations (see the module docstring).

  ``split`` is "train" or "val". Labels are the 19 train ids, 255 = void.
  """

  def __init__(self, root: str, split: str, num_classes: int = 19):
    files.check_num_classes(num_classes)
    if split not in SPLITS:
      raise errors.InputError(f"unknown Cityscapes split {split!r}; valid splits: "
                       f"{', '.join(SPLITS)}")
    if not os.path.isdir(root):
      raise errors.MissingFileError(_missing_root_message(root))
    entries, self._cities = list_entries(root, split)
    super().__init__(root, split, entries, num_classes, label_lut=label_id_lut())

  def city(self, index: int) -> str:
    """The city (directory name) of ``index``."""
    self._entry(index)  # IndexError if out of range
    return self._cities[int(index)]

  def cities(self) -> list[str]:
    """The city of every entry, in index order."""
    return list(self._cities)

  def check_raw_label(self, raw_label: np.ndarray, label_path: str) -> None:
    """ValueError naming ``label_path`` if it holds a value above the largest labelId."""
    values = np.unique(raw_label)
    invalid = values[values > MAX_LABEL_ID]
    if invalid.size:
      raise errors.InputError(
          f"label {label_path!r} has values {invalid.tolist()} above {MAX_LABEL_ID}: "
          f"labelIds images hold 0..{MAX_LABEL_ID}; is this a *{LABEL_SUFFIX}? (not "
          "*_gtFine_color.png, *_gtFine_instanceIds.png or a trainIds image)")

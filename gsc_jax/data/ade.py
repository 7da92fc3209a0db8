"""ADE20K (MIT SceneParsing, ADEChallengeData2016) as a grain random-access source.

Expected tree under ``root`` (``data.root``, the ADEChallengeData2016 directory):

  images/training/ADE_train_00000001.jpg ...       20,210 RGB photographs
  images/validation/ADE_val_00000001.jpg ...       2,000
  annotations/training/ADE_train_00000001.png ...  8-bit 'L' PNG: 0 = "other" (unlabelled),
  annotations/validation/ADE_val_00000001.png ...  1..150 the classes

The entries of a split are every ``*.jpg`` of ``images/<split>/`` sorted by name, each with
``annotations/<split>/<stem>.png``. The raw values are the class ids, with no shift: 0 is
kept as class id 0 (whether it is ignored at evaluation is decided by the task, not here);
255 is void; any other value is an error naming the file.
"""

import os

from gsc_jax.data import files
from gsc_jax import errors

IMAGE_DIR = "images"
LABEL_DIR = "annotations"
SPLITS = ("training", "validation")
SPLIT_ALIASES = {"train": "training", "val": "validation"}

# The published split sizes, for comparing with a local copy.
NUM_TRAINING_IMAGES = 20210
NUM_VALIDATION_IMAGES = 2000

EXPECTED_TREE = """\
  {root}/                                   (ADEChallengeData2016)
    images/training/ADE_train_00000001.jpg ...        20,210 images
    images/validation/ADE_val_00000001.jpg ...        2,000 images
    annotations/training/ADE_train_00000001.png ...   8-bit 'L' PNG, 0 = other, 1..150 classes
    annotations/validation/ADE_val_00000001.png ..."""


def canonical_split(split: str) -> str:
  """"training" or "validation" for ``split`` (also "train" / "val"); ValueError otherwise."""
  split = SPLIT_ALIASES.get(split, split)
  if split not in SPLITS:
    raise errors.InputError(f"unknown ADE20K split {split!r}; valid splits: "
                     f"{', '.join(SPLITS + tuple(SPLIT_ALIASES))}")
  return split


def _missing_root_message(root: str) -> str:
  """What to do when the dataset directory does not exist."""
  return (
      f"ADE20K root directory not found: {os.path.abspath(root)!r} (data.root={root!r}).\n"
      f"Expected tree:\n{EXPECTED_TREE.format(root=root)}\n"
      "Download ADEChallengeData2016.zip (MIT SceneParsing benchmark), extract it and "
      "set data.root to the extracted ADEChallengeData2016 directory.")


def _require_directory(path: str, root: str) -> None:
  files.require_directory(
      path, "ADE20K", EXPECTED_TREE.format(root=root),
      "Re-extract ADEChallengeData2016.zip or set data.root to the extracted directory.")


def list_entries(root: str, split: str) -> list[tuple[str, str, str]]:
  """The (name, image path, label path) of every ``*.jpg`` of ``images/<split>``, sorted
  by name; ``split`` is "training" or "validation". Errors name missing files."""
  image_dir = os.path.join(root, IMAGE_DIR, split)
  label_dir = os.path.join(root, LABEL_DIR, split)
  _require_directory(image_dir, root)
  _require_directory(label_dir, root)
  image_names = sorted(file_name for file_name in os.listdir(image_dir)
                       if file_name.endswith(".jpg"))
  if not image_names:
    raise errors.MissingFileError(f"no .jpg images in {image_dir!r}; re-extract "
                            "ADEChallengeData2016.zip")
  entries = []
  for image_name in image_names:
    name = image_name[:-len(".jpg")]
    image_path = os.path.join(image_dir, image_name)
    label_path = os.path.join(label_dir, name + ".png")
    if not os.path.isfile(label_path):
      raise errors.MissingFileError(
          f"annotation of image {image_path!r} not found: {label_path!r}; every image "
          "needs its annotation: re-extract ADEChallengeData2016.zip")
    entries.append((name, image_path, label_path))
  return entries


class ADE20KSegmentation(files.FileSegmentation):
  """Random-access source over ADEChallengeData2016 (see the module docstring).

  ``split`` is "training" or "validation" ("train" and "val" are accepted); the ``split``
  attribute holds the canonical name. Labels are the raw 0..150 ids, 255 = void.
  """

  def __init__(self, root: str, split: str, num_classes: int = 151):
    files.check_num_classes(num_classes)
    split = canonical_split(split)
    if not os.path.isdir(root):
      raise errors.MissingFileError(_missing_root_message(root))
    super().__init__(root, split, list_entries(root, split), num_classes)

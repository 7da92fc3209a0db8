"""Pascal VOC 2012 with the SBD "aug" labels as a grain random-access source.

Expected tree under ``root`` (``data.root``):

  JPEGImages/<id>.jpg                      RGB photographs
  SegmentationClassAug/<id>.png            8-bit single-channel PNG of raw class ids
                                           0..20, 255 = void (mode 'P' or 'L')
  ImageSets/Segmentation/train_aug.txt     10,582 training ids
  ImageSets/Segmentation/val.txt           1,449 validation ids

A list file line is either an image id (``2007_000032``) or MiB's two-path form
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``, paths relative
to ``root``). Every problem with the data raises an error naming the file concerned;
nothing is skipped silently, because a silently missing image changes the step image
lists and so the published numbers. The decoding and checks shared with the other
datasets are in ``gsc_jax.data.files``.
"""

import os

from gsc_jax.data import files
from gsc_jax import errors

# The 21 label ids (0 = background), Pascal VOC 2012's order.
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassAug"
LIST_DIR = os.path.join("ImageSets", "Segmentation")

EXPECTED_TREE = """\
  {root}/
    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png           class ids 0..20, 255 = void (8-bit 'P' or 'L')
    ImageSets/Segmentation/train_aug.txt    10,582 ids (one per line, or MiB's
                                            '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png')
    ImageSets/Segmentation/val.txt          1,449 ids"""


def _missing_root_message(root: str) -> str:
  """What to do when the dataset directory does not exist."""
  return (
      f"Pascal VOC root directory not found: {os.path.abspath(root)!r} (data.root={root!r}).\n"
      f"Expected tree:\n{EXPECTED_TREE.format(root=root)}\n"
      "Set data.root to the directory holding this tree: the VOC 2012 JPEGImages plus "
      "the SBD-augmented labels (SegmentationClassAug, train_aug.txt).\n"
      "The synthetic demo needs no download: "
      "python -m gsc_jax.main --config=configs/synthetic.py:15-1\n"
      "python -m gsc_jax.tools.write_synthetic_voc --out=DIR writes a synthetic dataset in "
      "this layout (then use data.root=DIR).")


def _relative_to_root(root: str, path: str) -> str:
  """A list-file path ('/JPEGImages/x.jpg' or 'JPEGImages/x.jpg') joined to ``root``."""
  # MiB writes the paths with a leading '/', which os.path.join would treat as absolute.
  return os.path.join(root, path.lstrip("/"))


def parse_list_file(root: str, list_path: str) -> list[tuple[str, str, str]]:
  """The (name, image path, label path) of every non-blank line of ``list_path``; an id
  listed twice is an error naming both lines (it would count the image twice)."""
  entries = []
  first_line_of = {}
  with open(list_path) as list_file:
    for line_number, line in enumerate(list_file, start=1):
      fields = line.split()
      if not fields:
        continue  # blank lines (e.g. a trailing newline) are not entries
      if len(fields) == 1:
        name = fields[0]
        image_path = os.path.join(root, IMAGE_DIR, name + ".jpg")
        label_path = os.path.join(root, LABEL_DIR, name + ".png")
      elif len(fields) == 2:
        image_path = _relative_to_root(root, fields[0])
        label_path = _relative_to_root(root, fields[1])
        name = os.path.splitext(os.path.basename(image_path))[0]
      else:
        raise errors.InputError(
            f"{list_path}:{line_number}: expected an image id or 'image_path label_path', "
            f"got {len(fields)} fields: {line.strip()!r}")
      if name in first_line_of:
        raise errors.InputError(
            f"{list_path}:{line_number}: id {name!r} is listed again (first on line "
            f"{first_line_of[name]}); remove the duplicated line")
      first_line_of[name] = line_number
      entries.append((name, image_path, label_path))
  if not entries:
    raise errors.InputError(f"list file {list_path!r} has no entries; it should list one image "
                     "id (or image and label paths) per line")
  return entries


class VOCSegmentation(files.FileSegmentation):
  """Random-access source over the Pascal VOC 2012 + SBD ("aug") layout.

  ``source[i]`` is ``{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W], "name": str}``
  with label values in [0, num_classes) plus 255 (void). ``split`` names the list file
  ``root/ImageSets/Segmentation/<split>.txt`` ("train_aug", "val", ...). Files are read
  lazily, when an index is accessed, and checked then (see ``files.FileSegmentation``).
  """

  def __init__(self, root: str, split: str, num_classes: int = 21):
    files.check_num_classes(num_classes)
    if not os.path.isdir(root):
      raise errors.MissingFileError(_missing_root_message(root))
    list_path = os.path.join(root, LIST_DIR, split + ".txt")
    if not os.path.isfile(list_path):
      raise errors.MissingFileError(
          f"list file of split {split!r} not found: {list_path!r}. Expected tree:\n"
          f"{EXPECTED_TREE.format(root=root)}\n"
          "train_aug.txt comes with the SBD augmentation (SegmentationClassAug); val.txt "
          "with VOC 2012.")
    self.list_path = list_path
    super().__init__(root, split, parse_list_file(root, list_path), num_classes)

  def missing_file_hint(self) -> str:
    """The list file naming the missing file, and what to do."""
    return (f"(listed in {self.list_path!r}); restore it or remove its line from the list "
            "file")

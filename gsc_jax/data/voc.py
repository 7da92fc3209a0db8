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
lists and so the published numbers.
"""

import os

import numpy as np
from PIL import Image

from gsc_jax.tasks import IGNORE_LABEL

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassAug"
LIST_DIR = os.path.join("ImageSets", "Segmentation")

# PIL modes whose pixel values are the stored 8-bit indices.
INDEX_LABEL_MODES = ("P", "L")
# PIL modes of colour images: a colour-coded label, not class ids.
COLOUR_LABEL_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA")

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
      "python -m gsc_jax.data.synthetic --out=DIR writes a synthetic dataset in this layout "
      "(then use data.root=DIR).")


def _relative_to_root(root: str, path: str) -> str:
  """A list-file path ('/JPEGImages/x.jpg' or 'JPEGImages/x.jpg') joined to ``root``."""
  # MiB writes the paths with a leading '/', which os.path.join would treat as absolute.
  return os.path.join(root, path.lstrip("/"))


def parse_list_file(root: str, list_path: str) -> list[tuple[str, str, str]]:
  """The (name, image path, label path) of every non-blank line of ``list_path``."""
  entries = []
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
        raise ValueError(
            f"{list_path}:{line_number}: expected an image id or 'image_path label_path', "
            f"got {len(fields)} fields: {line.strip()!r}")
      entries.append((name, image_path, label_path))
  if not entries:
    raise ValueError(f"list file {list_path!r} has no entries; it should list one image "
                     "id (or image and label paths) per line")
  return entries


def _require_file(path: str, kind: str, list_path: str) -> None:
  """FileNotFoundError naming ``path`` if it is not a file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{kind} file not found: {path!r} (listed in {list_path!r}); "
                            "restore it or remove its line from the list file")


def _decode_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of an image file; ValueError naming a corrupt file."""
  try:
    with Image.open(path) as image:
      # convert() decodes; grey-scale or CMYK JPEGs become RGB like in torchvision loaders.
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(f"cannot decode image {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error


def _image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image from its header only (no pixel decoding)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(f"cannot read image {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error
  return height, width


def _decode_label(path: str) -> np.ndarray:
  """uint8 [H, W] raw class ids of a label PNG; ValueError for anything else."""
  try:
    with Image.open(path) as label:
      mode = label.mode
      if mode in INDEX_LABEL_MODES:
        # No convert(): for mode 'P' the array holds the palette indices, i.e. the ids.
        return np.asarray(label, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(f"cannot decode label {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error
  if mode in COLOUR_LABEL_MODES:
    raise ValueError(
        f"label {path!r} is a colour image (PIL mode {mode!r}), not single-channel class "
        "ids: a colour-coded label must be converted to class ids (an 8-bit 'P' or 'L' "
        "PNG whose pixel values are 0..num_classes-1, 255 = void), e.g. the SBD "
        "SegmentationClassAug labels")
  raise ValueError(f"label {path!r} has PIL mode {mode!r}; expected an 8-bit "
                   "single-channel PNG (mode 'P' or 'L') of class ids, 255 = void")


class VOCSegmentation:
  """Random-access source over the Pascal VOC 2012 + SBD ("aug") layout.

  ``source[i]`` is ``{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W], "name": str}``
  with label values in [0, num_classes) plus 255 (void). ``split`` names the list file
  ``root/ImageSets/Segmentation/<split>.txt`` ("train_aug", "val", ...). Files are read
  lazily, when an index is accessed, and checked then.
  """

  def __init__(self, root: str, split: str, num_classes: int = 21):
    if not 1 <= num_classes <= IGNORE_LABEL:
      raise ValueError(f"num_classes must be in [1, {IGNORE_LABEL}] (uint8 labels, "
                       f"{IGNORE_LABEL} = void), got {num_classes}")
    if not os.path.isdir(root):
      raise FileNotFoundError(_missing_root_message(root))
    list_path = os.path.join(root, LIST_DIR, split + ".txt")
    if not os.path.isfile(list_path):
      raise FileNotFoundError(
          f"list file of split {split!r} not found: {list_path!r}. Expected tree:\n"
          f"{EXPECTED_TREE.format(root=root)}\n"
          "train_aug.txt comes with the SBD augmentation (SegmentationClassAug); val.txt "
          "with VOC 2012.")
    self.root = root
    self.split = split
    self.num_classes = int(num_classes)
    self.list_path = list_path
    self._entries = parse_list_file(root, list_path)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return (f"VOCSegmentation(root={self.root!r}, split={self.split!r}, "
            f"num_images={len(self)}, num_classes={self.num_classes})")

  def _entry(self, index: int) -> tuple[str, str, str]:
    index = int(index)
    if not 0 <= index < len(self._entries):
      raise IndexError(f"index {index} out of range for {len(self._entries)} images")
    return self._entries[index]

  def name(self, index: int) -> str:
    """The image id of ``index`` (e.g. '2007_000032')."""
    return self._entry(index)[0]

  def _load_label(self, label_path: str) -> np.ndarray:
    """The decoded label, checked to hold only class ids and void."""
    _require_file(label_path, "label", self.list_path)
    label = _decode_label(label_path)
    values = np.unique(label)
    invalid = values[(values >= self.num_classes) & (values != IGNORE_LABEL)]
    if invalid.size:
      raise ValueError(
          f"label {label_path!r} has values {invalid.tolist()} outside "
          f"[0, {self.num_classes}) and other than {IGNORE_LABEL} (void); check "
          f"data.num_classes={self.num_classes} and that the file holds class ids")
    return label

  @staticmethod
  def _check_same_size(image_size: tuple[int, int], label: np.ndarray, image_path: str,
                       label_path: str) -> None:
    if label.shape != tuple(image_size):
      raise ValueError(
          f"label {label_path!r} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
          f"{image_path!r} is {image_size[0]}x{image_size[1]}; the label must have the "
          "image's size")

  def read_label(self, index: int) -> np.ndarray:
    """The label of ``index`` only: uint8 [H, W] class ids, 255 = void.

    The image is not decoded (only its header is read, to check the label's size), so
    scanning every label for the step image lists stays fast.
    """
    _, image_path, label_path = self._entry(index)
    label = self._load_label(label_path)
    _require_file(image_path, "image", self.list_path)
    self._check_same_size(_image_size(image_path), label, image_path, label_path)
    return label

  def __getitem__(self, index: int) -> dict:
    name, image_path, label_path = self._entry(index)
    _require_file(image_path, "image", self.list_path)
    image = _decode_image(image_path)
    label = self._load_label(label_path)
    self._check_same_size(image.shape[:2], label, image_path, label_path)
    return {"image": image, "label": label, "name": name}

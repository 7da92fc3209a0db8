"""Dataset-independent parts of the file-based segmentation sources (VOC, ADE20K, Cityscapes).

``FileSegmentation`` is a grain random-access source over a list of entries
``(name, image path, label path)``; the dataset modules only build that list from their own
layout. Every source derived from it provides:

  __len__()
  name(index) -> str
  image_path(index) -> str
  label_path(index) -> str
  read_label(index) -> uint8 [H, W] class ids in [0, num_classes) or 255 (void); the label
      file is decoded, its raw values are checked (``check_raw_label``), it is mapped by
      ``label_lut`` and range-checked; its size is checked against the image header only
  __getitem__(index) -> {"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W], "name": str}
  fingerprint() -> str, a sha256 hex digest that changes when the list or a label file
      changes (the key of the on-disk cache of per-step image lists)
  root, split, num_classes attributes and a __repr__

Files are read lazily, when an index is accessed, and checked then. Every problem with the
data raises an error naming the file concerned; nothing is skipped silently, because a
silently missing image changes the step image lists and so the published numbers.
"""

import hashlib
import json
import os

import numpy as np
from PIL import Image

from gsc_jax.tasks import IGNORE_LABEL, LUT_SIZE
from gsc_jax import errors

# PIL modes whose pixel values are the stored 8-bit indices.
INDEX_LABEL_MODES = ("P", "L")
# PIL modes of colour images: a colour-coded label, not class ids.
COLOUR_LABEL_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA")


def require_file(path: str, kind: str, hint: str) -> None:
  """FileNotFoundError naming ``path`` (a ``kind`` file) if it is not a file.

  ``hint`` follows the path in the message: where the path came from and what to do.
  """
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"{kind} file not found: {path!r} {hint}")


def require_directory(path: str, dataset: str, expected_tree: str, remedy: str) -> None:
  """FileNotFoundError naming ``path`` and showing the dataset's expected tree if ``path``
  is not a directory; ``remedy`` says what to do."""
  if not os.path.isdir(path):
    raise errors.MissingFileError(f"{dataset} directory not found: {path!r}. Expected tree:\n"
                            f"{expected_tree}\n{remedy}")


def decode_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of an image file; ValueError naming a corrupt file."""
  try:
    with Image.open(path) as image:
      # convert() decodes; grey-scale or CMYK JPEGs become RGB like in torchvision loaders.
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as error:
    raise errors.InputError(f"cannot decode image {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error


def image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image from its header only (no pixel decoding)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as error:
    raise errors.InputError(f"cannot read image {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error
  return height, width


def decode_label(path: str) -> np.ndarray:
  """uint8 [H, W] raw values of a single-channel label PNG; ValueError for anything else.

  For mode 'P' the values are the palette indices (not the colours), for mode 'L' the grey
  levels: both are the stored ids.
  """
  try:
    with Image.open(path) as label:
      mode = label.mode
      if mode in INDEX_LABEL_MODES:
        # No convert(): for mode 'P' the array holds the palette indices, i.e. the ids.
        return np.asarray(label, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as error:
    raise errors.InputError(f"cannot decode label {path!r} ({error}); the file is corrupt or not "
                     "an image: re-download or re-extract it") from error
  if mode in COLOUR_LABEL_MODES:
    raise errors.InputError(
        f"label {path!r} is a colour image (PIL mode {mode!r}), not single-channel class "
        "ids: a colour-coded label must be converted to class ids (an 8-bit 'P' or 'L' "
        "PNG whose pixel values are 0..num_classes-1, 255 = void), e.g. the SBD "
        "SegmentationClassAug labels")
  raise errors.InputError(f"label {path!r} has PIL mode {mode!r}; expected an 8-bit "
                   "single-channel PNG (mode 'P' or 'L') of class ids, 255 = void")


def check_same_size(image_height_width: tuple[int, int], label: np.ndarray, image_path: str,
                    label_path: str) -> None:
  """ValueError naming both files if ``label`` is not of the image's (height, width)."""
  if label.shape != tuple(image_height_width):
    raise errors.InputError(
        f"label {label_path!r} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
        f"{image_path!r} is {image_height_width[0]}x{image_height_width[1]}; the label must "
        "have the image's size")


def check_label_range(label: np.ndarray, num_classes: int, label_path: str,
                      mapped: bool = False) -> None:
  """ValueError naming ``label_path`` if ``label`` holds a value outside [0, num_classes)
  other than 255 (void). ``mapped`` says the values are those after a label LUT."""
  values = np.unique(label)
  invalid = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if invalid.size:
    after_mapping = " after the label mapping" if mapped else ""
    raise errors.InputError(
        f"label {label_path!r} has values {invalid.tolist()}{after_mapping} outside "
        f"[0, {num_classes}) and other than {IGNORE_LABEL} (void); check "
        f"data.num_classes={num_classes} and that the file holds class ids")


def check_num_classes(num_classes: int) -> int:
  """``num_classes`` as an int; ValueError if uint8 labels with void 255 cannot hold it."""
  if not 1 <= num_classes <= IGNORE_LABEL:
    raise errors.InputError(f"num_classes must be in [1, {IGNORE_LABEL}] (uint8 labels, "
                     f"{IGNORE_LABEL} = void), got {num_classes}")
  return int(num_classes)


class FileSegmentation:
  """Random-access source over ``entries``: a list of (name, image path, label path).

  ``source[i]`` is ``{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W], "name": str}``
  with label values in [0, num_classes) plus 255 (void). ``label_lut`` (uint8 [256], or
  None for the identity) maps the decoded raw label values to class ids before the range
  check. Subclasses build the entries from their layout and may override
  ``check_raw_label`` (a check of the raw values, before the LUT) and
  ``missing_file_hint`` (what to do when a file of an entry is missing).
  """

  def __init__(self, root: str, split: str, entries: list[tuple[str, str, str]],
               num_classes: int, label_lut: np.ndarray | None = None):
    self.num_classes = check_num_classes(num_classes)
    if label_lut is not None:
      label_lut = np.asarray(label_lut)
      if label_lut.shape != (LUT_SIZE,) or label_lut.dtype != np.uint8:
        raise errors.InputError(f"label_lut must be uint8 [{LUT_SIZE}], got {label_lut.dtype} "
                         f"{list(label_lut.shape)}")
    if not entries:
      raise errors.InputError(f"{type(self).__name__} of split {split!r} under {root!r} has no "
                       "images")
    self.root = root
    self.split = split
    self.label_lut = label_lut
    self._entries = list(entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, "
            f"num_images={len(self)}, num_classes={self.num_classes})")

  def _entry(self, index: int) -> tuple[str, str, str]:
    """The (name, image path, label path) of ``index``; IndexError if out of range."""
    index = int(index)
    if not 0 <= index < len(self._entries):
      raise IndexError(f"index {index} out of range for {len(self._entries)} images")
    return self._entries[index]

  def name(self, index: int) -> str:
    """The image name of ``index`` (its file name without the extension/suffix)."""
    return self._entry(index)[0]

  def image_path(self, index: int) -> str:
    """The path of the image file of ``index``."""
    return self._entry(index)[1]

  def label_path(self, index: int) -> str:
    """The path of the label file of ``index``."""
    return self._entry(index)[2]

  def missing_file_hint(self) -> str:
    """What follows the path in the error for a missing file: its origin, what to do."""
    return ("(it was there when the source was created); restore it, or re-extract the "
            "dataset")

  def check_raw_label(self, raw_label: np.ndarray, label_path: str) -> None:
    """Checks the decoded label values before the LUT; by default every raw value is
    accepted here and only the mapped values are range-checked."""

  def _load_label(self, label_path: str) -> np.ndarray:
    """The decoded label, mapped by ``label_lut``, checked to hold class ids and void."""
    require_file(label_path, "label", self.missing_file_hint())
    label = decode_label(label_path)
    self.check_raw_label(label, label_path)
    if self.label_lut is not None:
      label = self.label_lut[label]
    check_label_range(label, self.num_classes, label_path, mapped=self.label_lut is not None)
    return label

  def read_label(self, index: int) -> np.ndarray:
    """The label of ``index`` only: uint8 [H, W] class ids, 255 = void.

    The image is not decoded (only its header is read, to check the label's size), so
    scanning every label for the step image lists stays fast.
    """
    _, image_path, label_path = self._entry(index)
    label = self._load_label(label_path)
    require_file(image_path, "image", self.missing_file_hint())
    check_same_size(image_size(image_path), label, image_path, label_path)
    return label

  def __getitem__(self, index: int) -> dict:
    """The decoded image, label and name of ``index``."""
    name, image_path, label_path = self._entry(index)
    require_file(image_path, "image", self.missing_file_hint())
    image = decode_image(image_path)
    label = self._load_label(label_path)
    check_same_size(image.shape[:2], label, image_path, label_path)
    return {"image": image, "label": label, "name": name}

  def fingerprint(self) -> str:
    """sha256 hex digest of what determines the labels: the class name, split,
    num_classes, label LUT and, per entry, its name, image and label paths relative to
    ``root`` and the label file's size and mtime_ns.

    It changes when the list or a label file changes, so it keys the on-disk cache of the
    per-step image lists. (A label rewritten with the same size within the file system's
    timestamp resolution is not seen.)
    """
    digest = hashlib.sha256()
    header = [type(self).__name__, self.split, self.num_classes,
              None if self.label_lut is None else self.label_lut.tobytes().hex()]
    digest.update(json.dumps(header).encode() + b"\n")
    for name, image_path, label_path in self._entries:
      require_file(label_path, "label", self.missing_file_hint())
      stat = os.stat(label_path)
      record = [name, os.path.relpath(image_path, self.root),
                os.path.relpath(label_path, self.root), stat.st_size, stat.st_mtime_ns]
      digest.update(json.dumps(record).encode() + b"\n")
    return digest.hexdigest()

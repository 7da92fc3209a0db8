"""A dataset built by gsc_jax.tfds_builders, read as a grain random-access source.

``TFDSSegmentation`` reads the ArrayRecord files of a built ``voc_aug``, ``ade20k`` or
``cityscapes`` dataset (local or on a bucket: ``data_dir`` is any path tfds accepts; gs://
needs gcsfs) through tfds' random-access data source and provides the contract of the file
sources: ``source[i]`` is ``{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W],
"name": str}`` with label values in [0, num_classes) plus 255 (void), plus ``read_label``,
``name``, ``fingerprint`` and, for cityscapes, ``city``. Index i is index i of the file
source the dataset was built from. Images and labels are decoded with PIL; names and cities
come from the dataset's metadata, without reading the records. Nothing here imports
TensorFlow.
"""

import hashlib
import io
import json

import numpy as np
from PIL import Image

from gsc_jax.data import files
from gsc_jax.tfds_builders import builders
from gsc_jax import errors

# Split names of the pipeline -> split names of the built datasets.
TFDS_SPLITS = {"train": "train", "val": "validation"}


def build_command(dataset: str, data_dir: str) -> str:
  """The command that builds ``dataset`` into ``data_dir``."""
  return (f"python -m gsc_jax.tools.build_tfds --dataset={dataset} "
          f"--root=/path/to/{dataset}/tree --data_dir={data_dir}")


def _corrupt(description: str, error: Exception) -> ValueError:
  """The error for a stored image or label that PIL cannot decode."""
  return ValueError(f"cannot decode {description} ({error}); the built dataset is corrupt: "
                    "rebuild it with python -m gsc_jax.tools.build_tfds (docs/tfds.md)")


class TFDSSegmentation:
  """Random-access source over a split of a dataset built by gsc_jax.tfds_builders.

  ``dataset`` is "voc", "ade" or "cityscapes"; ``split`` is "train" or "val" (the tfds
  splits "train" and "validation"); ``data_dir`` is the tfds data directory given to the
  build command. Labels are range-checked against ``num_classes`` when read, like the file
  sources, and ``num_classes`` must match the number stored when building.
  """

  def __init__(self, dataset: str, split: str, data_dir: str, num_classes: int):
    if dataset not in builders.BUILDERS:
      raise errors.InputError(f"unknown tfds dataset {dataset!r}; valid datasets: "
                       f"{', '.join(builders.BUILDERS)}")
    if split not in TFDS_SPLITS:
      raise errors.InputError(f"unknown split {split!r}; valid splits: {', '.join(TFDS_SPLITS)}")
    self.num_classes = files.check_num_classes(num_classes)
    builder = builders.BUILDERS[dataset](data_dir=data_dir)
    if not builder.is_prepared():
      raise errors.MissingFileError(
          f"tfds dataset {builder.name!r} version {builder.version} not found under "
          f"data_dir={data_dir!r} (expected {str(builder.data_path)!r}). Build it from the "
          f"dataset tree with:\n  {build_command(dataset, data_dir)}\n(see docs/tfds.md)")
    built_num_classes = builder.info.metadata["num_classes"]
    if built_num_classes != self.num_classes:
      raise errors.InputError(
          f"num_classes={self.num_classes} but tfds dataset {builder.name!r} under "
          f"{data_dir!r} holds {built_num_classes} classes; set "
          f"data.num_classes={built_num_classes}")
    self.dataset = dataset
    self.split = split
    self.data_dir = data_dir
    self.tfds_name = builder.name
    self.version = str(builder.version)
    self._tfds_split = TFDS_SPLITS[split]
    self._examples = builder.as_data_source(split=self._tfds_split)
    self._texts = builder.info.metadata["texts"][self._tfds_split]

  def __len__(self) -> int:
    return len(self._examples)

  def __repr__(self) -> str:
    return (f"TFDSSegmentation(dataset={self.dataset!r}, split={self.split!r}, "
            f"data_dir={self.data_dir!r}, num_images={len(self)}, "
            f"num_classes={self.num_classes})")

  def _check_index(self, index: int) -> int:
    """``index`` as an int; IndexError if out of range."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images")
    return index

  def _example(self, index: int) -> dict:
    """The stored example of ``index``; IndexError if out of range."""
    return self._examples[self._check_index(index)]

  def _describe(self, index: int, example: dict, feature: str) -> str:
    """Names a feature of an example in error messages (as the path does for files)."""
    name = example["name"].decode()
    return (f"{feature} of {self.tfds_name}:{self.version} {self._tfds_split}[{index}] "
            f"(name {name!r}) under {self.data_dir}")

  def _decode_label(self, index: int, example: dict) -> np.ndarray:
    """The stored label: uint8 [H, W] class ids, range-checked."""
    description = self._describe(index, example, "label")
    try:
      with Image.open(io.BytesIO(example["label"])) as label_image:
        if label_image.mode != "L":
          raise errors.InputError(f"PIL mode {label_image.mode!r}, expected 'L'")
        label = np.asarray(label_image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
      raise _corrupt(description, error) from error
    files.check_label_range(label, self.num_classes, description)
    return label

  def _open_image(self, index: int, example: dict) -> Image.Image:
    """The stored image, opened (decoded lazily by PIL)."""
    try:
      return Image.open(io.BytesIO(example["image"]))
    except (OSError, SyntaxError, ValueError) as error:
      raise _corrupt(self._describe(index, example, "image"), error) from error

  def _check_same_size(self, index: int, example: dict, image_height_width, label) -> None:
    files.check_same_size(image_height_width, label, self._describe(index, example, "image"),
                          self._describe(index, example, "label"))

  def name(self, index: int) -> str:
    """The image name of ``index`` (that of the file source)."""
    return self._texts["name"][self._check_index(index)]

  def city(self, index: int) -> str:
    """The city of image ``index`` (cityscapes only)."""
    if "city" not in self._texts:
      raise errors.InputError(f"city() is only defined for cityscapes, not {self.dataset!r}")
    return self._texts["city"][self._check_index(index)]

  def read_label(self, index: int) -> np.ndarray:
    """The label of ``index`` only: uint8 [H, W] class ids, 255 = void.

    The image is not decoded (only its header is read, to check the label's size).
    """
    example = self._example(index)
    label = self._decode_label(index, example)
    with self._open_image(index, example) as image:
      width, height = image.size
    self._check_same_size(index, example, (height, width), label)
    return label

  def __getitem__(self, index: int) -> dict:
    """The decoded image, label and name of ``index``."""
    example = self._example(index)
    with self._open_image(index, example) as image:
      try:
        # convert() decodes; grey-scale or CMYK images become RGB as in the file sources.
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
      except (OSError, SyntaxError, ValueError) as error:
        raise _corrupt(self._describe(index, example, "image"), error) from error
    label = self._decode_label(index, example)
    self._check_same_size(index, example, pixels.shape[:2], label)
    return {"image": pixels, "label": label, "name": example["name"].decode()}

  def fingerprint(self) -> str:
    """sha256 hex digest of the tfds name, version, split, number of examples and
    data_dir: the content of a built version cannot change without a version bump."""
    key = [self.tfds_name, self.version, self._tfds_split, len(self), self.data_dir]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()

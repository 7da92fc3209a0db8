"""The three segmentation datasets as tfds GeneratorBasedBuilders writing ArrayRecord.

Each builder reads the file source of gsc_jax for its dataset from a local tree (``root``)
and writes the splits "train" and "validation". Every example holds

  image  the image file's bytes as stored (JPEG or PNG; not re-encoded)
  label  an 8-bit grey-scale PNG of the class ids after the dataset's mapping (the
         file source's ``read_label``): 0..num_classes-1, 255 = void, so readers need no
         dataset-specific mapping
  name   the image name of the file source
  city   (cityscapes only) the city of the image

in the order of the file source (shuffling is disabled, so index i of a split is index i of
the file source). The metadata (``info.metadata``, metadata.json) holds the number of
classes and, per split, the list of every text feature (names, cities), so that readers get
them without reading the records (which hold the images).
Every error of the file sources (missing file, corrupt image, bad label) propagates with
its message and nothing is written. No step needs TensorFlow: the features are plain bytes
and text, and the output format is ArrayRecord.
"""

import abc
import io
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from gsc_jax.data import ade
from gsc_jax.data import cityscapes
from gsc_jax.data import voc
from gsc_jax import errors

# Progress is printed every this many examples while building.
PROGRESS_EVERY = 500


def encode_label_png(label: np.ndarray) -> bytes:
  """The bytes of an 8-bit grey-scale ('L') PNG of a uint8 [H, W] label."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(label, dtype=np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a gsc_jax file source into ArrayRecord files; subclasses name the dataset.

  ``root`` is the dataset tree, needed only to build (not to read a built dataset).
  Subclasses set ``name``, ``NUM_CLASSES``, ``SOURCE_SPLITS`` (tfds split -> split of the
  file source), ``DESCRIPTION``, ``make_source`` and ``TEXT_FEATURES``: the methods of
  the file source (index -> str) stored as text features, ("name",) by default.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NUM_CLASSES: int
  SOURCE_SPLITS: dict[str, str]
  DESCRIPTION: str
  TEXT_FEATURES = ("name",)

  def __init__(self, *, root: str | None = None, **kwargs):
    self.root = root
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @abc.abstractmethod
  def make_source(self, split: str):
    """The file source of ``split`` (a split name of the file source) under ``root``."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Tensor(
            shape=(), dtype=np.object_,
            doc="the image file's bytes as stored (JPEG or PNG); decode with PIL"),
        "label": tfds.features.Tensor(
            shape=(), dtype=np.object_,
            doc="8-bit grey-scale PNG of class ids, 255 = void"),
        **{feature: tfds.features.Text() for feature in self.TEXT_FEATURES},
    }
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(num_classes=self.NUM_CLASSES),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    """One generator per split; the file sources are opened (and checked) first."""
    del dl_manager  # nothing is downloaded: the examples come from the local tree
    if self.root is None:
      raise errors.InputError(
          f"building tfds dataset {self.name!r} needs the dataset tree: pass root=..., "
          "e.g. python -m gsc_jax.tools.build_tfds --dataset=... --root=/path/to/tree "
          "--data_dir=/path/to/tfds")
    sources = {split: self.make_source(source_split)
               for split, source_split in self.SOURCE_SPLITS.items()}
    texts = {split: {feature: [getattr(source, feature)(index)
                               for index in range(len(source))]
                     for feature in self.TEXT_FEATURES}
             for split, source in sources.items()}
    self.info.metadata["texts"] = texts  # written to metadata.json with the splits
    return {split: self._generate_examples(split, source, texts[split])
            for split, source in sources.items()}

  def _generate_examples(self, split: str, source, texts: dict[str, list[str]]):
    """(index, example) for every image of ``source``, checked by decoding it."""
    start = time.time()
    for index in range(len(source)):
      # Decoding the image and label checks them exactly as training would.
      label = source[index]["label"]
      with open(source.image_path(index), "rb") as image_file:
        image_bytes = image_file.read()
      yield index, {"image": image_bytes, "label": encode_label_png(label),
                    **{feature: values[index] for feature, values in texts.items()}}
      if (index + 1) % PROGRESS_EVERY == 0 or index + 1 == len(source):
        print(f"  {self.name} {split}: {index + 1}/{len(source)} examples "
              f"({time.time() - start:.0f} s)", flush=True)


class VocAug(SegmentationBuilder):
  """Pascal VOC 2012 with the SBD "aug" labels: train = train_aug, validation = val."""

  name = "voc_aug"
  NUM_CLASSES = 21
  SOURCE_SPLITS = {"train": "train_aug", "validation": "val"}
  DESCRIPTION = ("Pascal VOC 2012 segmentation with the SBD augmented labels "
                 "(SegmentationClassAug): 21 classes, 255 = void.")

  def make_source(self, split: str):
    return voc.VOCSegmentation(self.root, split, num_classes=self.NUM_CLASSES)


class Ade20k(SegmentationBuilder):
  """ADE20K (ADEChallengeData2016): train = training, validation = validation."""

  name = "ade20k"
  NUM_CLASSES = 151
  SOURCE_SPLITS = {"train": "training", "validation": "validation"}
  DESCRIPTION = ("ADE20K scene parsing (ADEChallengeData2016): class ids 0 (other) and "
                 "1..150, 255 = void.")

  def make_source(self, split: str):
    return ade.ADE20KSegmentation(self.root, split, num_classes=self.NUM_CLASSES)


class Cityscapes(SegmentationBuilder):
  """Cityscapes fine annotations as the 19 train ids, with each image's city."""

  name = "cityscapes"
  NUM_CLASSES = 19
  TEXT_FEATURES = ("name", "city")
  SOURCE_SPLITS = {"train": "train", "validation": "val"}
  DESCRIPTION = ("Cityscapes fine annotations mapped from labelIds to the 19 train ids, "
                 "255 = void; each example also holds its city.")

  def make_source(self, split: str):
    return cityscapes.CityscapesSegmentation(self.root, split, num_classes=self.NUM_CLASSES)


# --dataset of the build command and of TFDSSegmentation -> builder class.
BUILDERS = {"voc": VocAug, "ade": Ade20k, "cityscapes": Cityscapes}

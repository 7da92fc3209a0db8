"""grain input pipelines: one per incremental step over that step's image list.

Train: shuffle (reshuffled every epoch) -> repeat -> label transform of the step -> random
resized crop, flip, normalise -> this process's rows -> batch. Evaluation: the step's test
images in a fixed order, padded with fully-ignored images to a whole number of global batches
so every process runs the same number of batches.

Both streams are cut into global batches the same way on any number of processes: global
batch ``b`` is rows ``[b*B, (b+1)*B)`` of the stream and process ``p`` of ``P`` holds its
rows ``[p*B/P, (p+1)*B/P)`` (``ProcessRows``), the block ``mesh.to_global_batch`` puts on
that process's devices. The crop and flip of an image are drawn from its position in the
global stream, so a run feeds the same augmented global batches on 1 or on ``P`` processes.
"""

import hashlib

import grain
import numpy as np

from gsc_jax import tasks
from gsc_jax.data import ade
from gsc_jax.data import cityscapes
from gsc_jax.data import synthetic
from gsc_jax.data import transforms
from gsc_jax.data import voc
from gsc_jax import errors


DATASETS = ("synthetic", "voc", "ade", "cityscapes")
SOURCES = ("files", "tfds")


def class_names(dataset: str) -> dict[int, str]:
  """Class id -> name where the dataset's names are known here (VOC, Cityscapes), else {}
  (the synthetic classes and ADE20K's 150 are shown by id)."""
  names = {"voc": voc.CLASS_NAMES, "cityscapes": cityscapes.CLASS_NAMES}.get(dataset, ())
  return dict(enumerate(names))


def make_source(config, split: str):
  """The random-access source of ``config.dataset`` for ``split`` ("train" or "val").

  ``data.source`` picks the dataset tree under ``data.root`` ("files") or the ArrayRecord
  build under ``data.tfds_dir`` ("tfds", docs/tfds.md). Cityscapes pools its train and val
  folders: its domain-incremental steps split the images by city (data/splits.py).
  """
  data = config.data
  if config.dataset not in DATASETS:
    raise errors.InputError(f"unknown dataset {config.dataset!r}; valid datasets: "
                     f"{', '.join(DATASETS)}")
  if config.dataset == "synthetic":
    num_images = data.num_train_images if split == "train" else data.num_val_images
    return synthetic.SyntheticSegmentation(
        split, num_images, num_classes=data.num_classes, image_size=data.image_size,
        seed=data.dataset_seed)
  if data.source not in SOURCES:
    raise errors.InputError(f"unknown data.source {data.source!r}; valid: {', '.join(SOURCES)}")
  if data.source == "tfds":
    from gsc_jax.data import tfds_source  # only here: tensorflow_datasets is slow to import
    if not data.tfds_dir:
      raise errors.InputError("data.source=tfds needs data.tfds_dir (the directory or gs:// path "
                       "the datasets were built into; see docs/tfds.md)")
    make = lambda split: tfds_source.TFDSSegmentation(
        config.dataset, split, data.tfds_dir, num_classes=data.num_classes)
  else:
    if not data.root:
      raise errors.InputError(f"data.root is empty: set it to the {config.dataset} directory "
                       "(the expected trees are in the README)")
    make = {
        "voc": lambda split: voc.VOCSegmentation(
            data.root, "train_aug" if split == "train" else "val", data.num_classes),
        "ade": lambda split: ade.ADE20KSegmentation(
            data.root, "training" if split == "train" else "validation", data.num_classes),
        "cityscapes": lambda split: cityscapes.CityscapesSegmentation(
            data.root, split, data.num_classes),
    }[config.dataset]
  if config.dataset == "cityscapes":
    return ConcatSource([make("train"), make("val")], split="train+val")
  return make(split)


class ConcatSource:
  """Several sources seen as one (Cityscapes' train and val folders)."""

  def __init__(self, sources, split: str):
    self.sources = list(sources)
    self.split = split
    self.num_classes = self.sources[0].num_classes
    self._starts = np.cumsum([0] + [len(source) for source in self.sources])

  def __len__(self):
    return int(self._starts[-1])

  def _locate(self, index: int):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images")
    part = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self.sources[part], index - int(self._starts[part])

  def __getitem__(self, index):
    source, local_index = self._locate(index)
    return source[local_index]

  def read_label(self, index):
    source, local_index = self._locate(index)
    return source.read_label(local_index)

  def name(self, index):
    source, local_index = self._locate(index)
    return source.name(local_index)

  def city(self, index):
    source, local_index = self._locate(index)
    return source.city(local_index)

  def fingerprint(self):
    parts = [source.fingerprint() for source in self.sources]
    if any(part is None for part in parts):
      return None
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class SubsetSource:
  """The images of ``source`` at ``indices``; index -1 is a blank, fully ignored image."""

  def __init__(self, source, indices, blank_shape=None):
    self.source = source
    self.indices = np.asarray(indices, dtype=np.int64)
    self.blank_shape = blank_shape

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    source_index = int(self.indices[index])
    if source_index < 0:
      height, width = self.blank_shape
      return {"image": np.zeros((height, width, 3), np.uint8),
              "label": np.full((height, width), tasks.IGNORE_LABEL, np.uint8),
              "name": "padding"}
    return self.source[source_index]


class ApplyLabelLut(grain.transforms.Map):
  """Raw class ids -> the step's target channels (docs/algorithm.md 1.3); errors on bad ids."""

  def __init__(self, lut: np.ndarray, num_classes: int):
    self.lut = lut
    self.num_classes = num_classes

  def map(self, element):
    element = dict(element)
    element["label"] = tasks.apply_label_lut(
        element["label"], self.lut, self.num_classes, name=element.get("name", ""))
    element.pop("name", None)
    return element


class ProcessRows(grain.MapDataset):
  """One process's rows of every global batch of ``parent``.

  Local element ``i`` is row ``i % L`` of this process's block of global batch ``i // L``
  (``L = B / P``), i.e. element ``(i // L) * B + p * L + i % L`` of ``parent``. Contiguous
  blocks, not every P-th element, because ``jax.make_array_from_process_local_data`` lays
  the processes' local batches one after the other (``mesh.make_mesh`` orders the devices by
  process), so the global batch is the single-process batch element for element.
  """

  def __init__(self, parent: grain.MapDataset, global_batch_size: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index

  def __len__(self) -> int:
    return len(self._parent) // self.global_batch_size * self.local_batch_size

  def parent_index(self, index: int) -> int:
    """The index in ``parent`` of local element ``index``."""
    batch, row = divmod(int(index), self.local_batch_size)
    return (batch * self.global_batch_size + self.process_index * self.local_batch_size
            + row)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.parent_index(index)]

  def __str__(self) -> str:
    return (f"ProcessRows(process={self.process_index}, "
            f"rows={self.local_batch_size}/{self.global_batch_size})")


def augment_seed(seed: int) -> int:
  """The seed of the crop and flip draws of a train stream seeded with ``seed``.

  Explicit, so that it depends on ``seed`` alone and not on where the random map sits in
  the pipeline. The value is the one grain derives by default for a random map five
  transformations below ``.seed(seed)``, where it sat when each process augmented its own
  slice: one-process runs keep their draws, and their checkpointed iterators resume them.
  """
  return int(np.random.SeedSequence([seed, 5]).generate_state(1, dtype=np.uint32)[0])


def _read_options(config):
  return grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=config.data.prefetch_batches)


def train_dataset(config, source, indices, label_lut, seed: int,
                  process_index: int, process_count: int) -> grain.IterDataset:
  """Infinite iterator dataset of this process's rows of the global train batches.

  The global stream (shuffled, repeated, augmented) is the same for any ``process_count``;
  every image's crop and flip is drawn from ``seed`` and its index in that stream, so the
  global batches do not depend on how many processes build them (``ProcessRows``).
  """
  batch_size = config.optim.batch_size
  if batch_size % process_count:
    raise errors.InputError(f"optim.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes")
  data = config.data
  dataset = (grain.MapDataset.source(SubsetSource(source, indices))
             .seed(seed)
             .shuffle()
             .repeat(None))
  dataset = dataset.map(ApplyLabelLut(label_lut, source.num_classes))
  # Before the per-process rows: grain draws from the index in this (global) stream.
  # Lazy, so each process still reads and augments only its own rows.
  dataset = dataset.random_map(transforms.TrainAugment(
      data.crop_size, scale=(data.crop_scale_min, data.crop_scale_max),
      ratio=(data.crop_ratio_min, data.crop_ratio_max),
      flip_probability=data.flip_probability), seed=augment_seed(seed))
  dataset = ProcessRows(dataset, batch_size, process_index, process_count)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  return dataset.to_iter_dataset(_read_options(config))


def eval_dataset(config, source, indices, label_lut,
                 process_index: int, process_count: int) -> tuple[grain.IterDataset, int]:
  """This process's evaluation batches and their number (same on every process); global
  batch ``b`` is padded images ``[b*G, (b+1)*G)`` in order on any number of processes."""
  data = config.data
  global_batch = data.eval_batch_size
  if global_batch % process_count:
    raise errors.InputError(f"data.eval_batch_size={global_batch} is not divisible by the "
                     f"{process_count} processes")
  num_batches = -(-len(indices) // global_batch)
  padded = np.full(num_batches * global_batch, -1, np.int64)
  padded[:len(indices)] = indices
  if data.eval_mode == "center_crop":
    preprocess = transforms.EvalPreprocess(crop_size=data.eval_size)
  elif data.eval_mode == "full":
    preprocess = transforms.EvalPreprocess(crop_size=None,
                                           pad_to=(data.eval_size, data.eval_size))
  else:
    raise errors.InputError(f"unknown data.eval_mode {data.eval_mode!r}; valid: center_crop, full")
  dataset = grain.MapDataset.source(
      SubsetSource(source, padded, blank_shape=(data.eval_size, data.eval_size)))
  dataset = ProcessRows(dataset, global_batch, process_index, process_count)
  dataset = dataset.map(ApplyLabelLut(label_lut, source.num_classes))
  dataset = dataset.map(preprocess)
  dataset = dataset.batch(global_batch // process_count, drop_remainder=True)
  return dataset.to_iter_dataset(_read_options(config)), num_batches


"""grain input pipelines: one per incremental step over that step's image list.

Train: shuffle (reshuffled every epoch) -> repeat -> this process's slice -> label
transform of the step -> random resized crop, flip, normalise -> batch. Evaluation:
the step's test images in a fixed order, padded with fully-ignored images to a whole number
of global batches so every process runs the same number of batches.
"""

import sys
import time

import grain
import numpy as np

from gsc_jax import tasks
from gsc_jax.data import synthetic
from gsc_jax.data import transforms
from gsc_jax.data import voc


def make_source(config, split: str):
  """The random-access source of ``config.dataset`` for ``split`` ("train" or "val")."""
  data = config.data
  if config.dataset == "synthetic":
    num_images = data.num_train_images if split == "train" else data.num_val_images
    return synthetic.SyntheticSegmentation(
        split, num_images, num_classes=data.num_classes, image_size=data.image_size,
        seed=data.dataset_seed)
  if config.dataset == "voc":
    return voc.VOCSegmentation(
        data.root, "train_aug" if split == "train" else "val", num_classes=data.num_classes)
  raise ValueError(f"unknown dataset {config.dataset!r}; valid datasets: synthetic, voc")


def label_classes(source, description: str) -> list[np.ndarray]:
  """The sorted distinct raw label values of every image (for the step filters)."""
  classes = []
  start = time.time()
  for index in range(len(source)):
    classes.append(np.unique(source.read_label(index)))
    if (index + 1) % 1000 == 0 or index + 1 == len(source):
      print(f"  scanning {description} labels: {index + 1}/{len(source)} "
            f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
  return classes


def train_indices(classes_per_image, task, step, overlap: bool) -> np.ndarray:
  return tasks.step_indices(
      classes_per_image, lambda classes: tasks.keep_train_image(classes, task, step, overlap))


def test_indices(classes_per_image, task, step) -> np.ndarray:
  return tasks.step_indices(
      classes_per_image, lambda classes: tasks.keep_test_image(classes, task, step))


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
  """Raw class ids -> the step's target channels (ALGORITHM.md 1.3); errors on bad ids."""

  def __init__(self, lut: np.ndarray, num_classes: int):
    self.lut = lut
    self.num_classes = num_classes

  def map(self, element):
    element = dict(element)
    element["label"] = tasks.apply_label_lut(
        element["label"], self.lut, self.num_classes, name=element.get("name", ""))
    element.pop("name", None)
    return element


def _read_options(config):
  return grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=config.data.prefetch_batches)


def train_dataset(config, source, indices, label_lut, seed: int,
                  process_index: int, process_count: int) -> grain.IterDataset:
  """Infinite iterator dataset of this process's share of the global train batches."""
  batch_size = config.optim.batch_size
  if batch_size % process_count:
    raise ValueError(f"optim.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes")
  data = config.data
  dataset = (grain.MapDataset.source(SubsetSource(source, indices))
             .seed(seed)
             .shuffle()
             .repeat(None))
  dataset = dataset[process_index::process_count]
  dataset = dataset.map(ApplyLabelLut(label_lut, source.num_classes))
  dataset = dataset.random_map(transforms.TrainAugment(
      data.crop_size, scale=(data.crop_scale_min, data.crop_scale_max),
      ratio=(data.crop_ratio_min, data.crop_ratio_max),
      flip_probability=data.flip_probability))
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  return dataset.to_iter_dataset(_read_options(config))


def eval_dataset(config, source, indices, label_lut,
                 process_index: int, process_count: int) -> tuple[grain.IterDataset, int]:
  """This process's evaluation batches and their number (same on every process)."""
  data = config.data
  global_batch = data.eval_batch_size
  if global_batch % process_count:
    raise ValueError(f"data.eval_batch_size={global_batch} is not divisible by the "
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
    raise ValueError(f"unknown data.eval_mode {data.eval_mode!r}; valid: center_crop, full")
  dataset = grain.MapDataset.source(
      SubsetSource(source, padded, blank_shape=(data.eval_size, data.eval_size)))
  dataset = dataset[process_index::process_count]
  dataset = dataset.map(ApplyLabelLut(label_lut, source.num_classes))
  dataset = dataset.map(preprocess)
  dataset = dataset.batch(global_batch // process_count, drop_remainder=True)
  return dataset.to_iter_dataset(_read_options(config)), num_batches


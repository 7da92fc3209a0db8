"""The input pipeline on several processes, simulated in one: each process's train and
evaluation datasets are built with its ``process_index`` (no real processes are started).

A global batch is the processes' local batches one after the other (mesh.py), so the
concatenation of the local batches in process order must be the batch one process builds,
and every image's crop and flip must come from its place in the global stream, not from
its place in one process's share of it.
"""

import types

import numpy as np
import pytest

from configs import synthetic as synthetic_config
from gsc_jax import mesh
from gsc_jax import tasks
from gsc_jax.data import pipeline
from gsc_jax.data import synthetic

NUM_IMAGES = 6   # not a multiple of the batch: global batch 1 spans the first epoch boundary
BATCH_SIZE = 4
NUM_CLASSES = 5
SEED = 7


@pytest.fixture(scope="module")
def config():
  return synthetic_config.get_config(
      f"2-1,data.num_classes={NUM_CLASSES},data.image_size=32,data.crop_size=16,"
      f"data.eval_size=16,data.eval_batch_size={BATCH_SIZE},optim.batch_size={BATCH_SIZE},"
      "data.num_threads=1")


@pytest.fixture(scope="module")
def label_lut():
  task = tasks.get_task("synthetic", "2-1", num_classes=NUM_CLASSES)
  return tasks.train_label_lut(task, 0, void_to_background=False)


@pytest.fixture(scope="module")
def source():
  return synthetic.SyntheticSegmentation("train", NUM_IMAGES, num_classes=NUM_CLASSES,
                                         image_size=32)


class OneImageSource:
  """``source``'s image 0 at every index: two elements differ only by their augmentation."""

  def __init__(self, source):
    self.image = source[0]
    self.num_classes = source.num_classes

  def __len__(self):
    return NUM_IMAGES

  def __getitem__(self, index):
    return dict(self.image)


def train_batches(config, source, label_lut, process_index, process_count, num_batches):
  """The first ``num_batches`` local train batches of one process."""
  dataset = pipeline.train_dataset(config, source, np.arange(len(source)), label_lut, SEED,
                                   process_index=process_index, process_count=process_count)
  iterator = iter(dataset)
  return [next(iterator) for _ in range(num_batches)]


def concatenated(local_batches):
  """The global batch of ``local_batches`` (one per process, in process order)."""
  return {key: np.concatenate([batch[key] for batch in local_batches])
          for key in local_batches[0]}


def test_two_processes_draw_different_crops_for_the_same_images(config, source, label_lut):
  same_images = OneImageSource(source)
  halves = [train_batches(config, same_images, label_lut, p, 2, 1)[0] for p in (0, 1)]
  # Equal labels too would mean equal crops and flips: each process drawing for its local
  # index instead of the global one.
  assert not np.array_equal(halves[0]["label"], halves[1]["label"])
  assert not np.array_equal(halves[0]["image"], halves[1]["image"])
  # Within one global batch every row has a crop of its own.
  rows = concatenated(halves)["image"]
  assert len({row.tobytes() for row in rows}) == BATCH_SIZE


def test_two_processes_feed_the_one_process_global_batches(config, source, label_lut):
  num_batches = 3  # rows 0-11: two epoch boundaries (after rows 5 and 11)
  one_process = train_batches(config, source, label_lut, 0, 1, num_batches)
  per_process = [train_batches(config, source, label_lut, p, 2, num_batches) for p in (0, 1)]
  for batch in range(num_batches):
    assert per_process[0][batch]["image"].shape[0] == BATCH_SIZE // 2
    global_batch = concatenated([per_process[0][batch], per_process[1][batch]])
    for key in ("image", "label"):
      np.testing.assert_array_equal(global_batch[key], one_process[batch][key],
                                    err_msg=f"{key} of global batch {batch}")


def test_a_process_iterator_resumes_from_its_state(config, source, label_lut):
  dataset = pipeline.train_dataset(config, source, np.arange(NUM_IMAGES), label_lut, SEED,
                                   process_index=1, process_count=2)
  iterator = iter(dataset)
  for _ in range(2):
    next(iterator)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = iter(dataset)
  resumed.set_state(state)
  actual = next(resumed)
  for key in ("image", "label"):
    np.testing.assert_array_equal(actual[key], expected[key])


def test_two_processes_evaluate_the_one_process_batches_in_order(config, source, label_lut):
  indices = np.arange(NUM_IMAGES)
  one_dataset, num_batches = pipeline.eval_dataset(config, source, indices, label_lut, 0, 1)
  one_process = list(one_dataset)
  per_process = [list(pipeline.eval_dataset(config, source, indices, label_lut, p, 2)[0])
                 for p in (0, 1)]
  assert num_batches == len(one_process) == len(per_process[1]) == 2
  for batch in range(num_batches):
    global_batch = concatenated([per_process[0][batch], per_process[1][batch]])
    for key in ("image", "label"):
      np.testing.assert_array_equal(global_batch[key], one_process[batch][key])
  # The last global batch is images 4 and 5, then two padding images.
  assert np.all(one_process[1]["label"][2:] == tasks.IGNORE_LABEL)


def test_process_rows_are_contiguous_blocks_of_each_global_batch():
  rows = pipeline.ProcessRows(pipeline.grain.MapDataset.range(12), 4, process_index=1,
                              process_count=2)
  assert len(rows) == 6
  assert [rows[i] for i in range(6)] == [2, 3, 6, 7, 10, 11]


def test_the_mesh_orders_devices_by_process_keeping_their_order_within():
  devices = [types.SimpleNamespace(id=i, process_index=p)
             for i, p in enumerate([1, 0, 1, 0, 0])]
  assert [d.id for d in mesh.process_major(devices)] == [1, 3, 4, 0, 2]

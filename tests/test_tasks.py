"""Task registry, label transforms and image filters (docs/algorithm.md 1.1-1.3)."""

import numpy as np
import pytest

from gsc_jax import tasks


def _all_registered_tasks():
  for name in tasks.VOC_TASKS:
    yield tasks.get_task("voc", name)
  for name in tasks.ADE_TASKS:
    yield tasks.get_task("ade", name)
  for name in tasks.CITYSCAPES_DOMAIN_TASKS:
    yield tasks.get_task("cityscapes", name)
  for name in ("15-1", "10-5-5", "offline", "4-2"):
    yield tasks.get_task("synthetic", name)
  yield tasks.get_task("synthetic", "100-10", num_classes=151)
  yield tasks.get_task("synthetic", "3-3", num_classes=10)


@pytest.mark.parametrize("task", list(_all_registered_tasks()),
                         ids=lambda task: f"{task.dataset}-{task.name}")
def test_steps_partition_the_classes(task):
  all_classes = [c for step in task.steps for c in step]
  assert len(all_classes) == len(set(all_classes))  # disjoint
  assert set(all_classes) == set(range(task.num_classes))  # cover
  assert 0 in task.steps[0]


def test_voc_15_1_and_alias():
  task = tasks.get_task("voc", "15-1")
  assert task.steps == (tuple(range(16)), (16,), (17,), (18,), (19,), (20,))
  assert task.num_classes == 21
  assert tasks.get_task("voc", "15-5s") == task


def test_named_task_shapes():
  assert len(tasks.get_task("voc", "10-1").steps) == 11
  assert tasks.get_task("voc", "5-3").steps[1] == (6, 7, 8)
  assert tasks.get_task("voc", "10-5-5").steps == (tuple(range(11)), tuple(range(11, 16)),
                                                   tuple(range(16, 21)))
  ade = tasks.get_task("ade", "100-10")
  assert len(ade.steps) == 6
  assert ade.steps[1] == tuple(range(101, 111)) and ade.steps[-1] == tuple(range(141, 151))
  assert len(tasks.get_task("ade", "100-5").steps) == 11
  assert tasks.get_task("ade", "50") == tasks.get_task("ade", "50-50")
  assert tasks.get_task("ade", "offline").steps == (tuple(range(151)),)


def test_synthetic_tasks():
  assert tasks.get_task("synthetic", "15-1").steps == tasks.get_task("voc", "15-1").steps
  assert tasks.get_task("synthetic", "15-5s").name == "15-1"
  assert (tasks.get_task("synthetic", "100-10", num_classes=151).steps
          == tasks.get_task("ade", "100-10").steps)
  generic = tasks.get_task("synthetic", "3-2", num_classes=8)
  assert generic.steps == ((0, 1, 2, 3), (4, 5), (6, 7))
  assert tasks.get_task("synthetic", "offline", num_classes=5).steps == ((0, 1, 2, 3, 4),)
  with pytest.raises(ValueError, match="groups of 3"):
    tasks.get_task("synthetic", "3-3", num_classes=8)
  with pytest.raises(ValueError, match="unknown task '10-5-5'"):
    tasks.get_task("synthetic", "10-5-5", num_classes=8)  # VOC names need 21 classes


def test_cityscapes_domain_tasks():
  task = tasks.get_task("cityscapes", "11-5")
  assert task.steps[0] == tuple(range(19)) and task.steps[1:] == ((), ())
  assert task.domains[0] == tasks.CITYSCAPES_CITIES[:11]
  assert task.domains[0][-2:] == ("bochum", "cologne")  # PLOP's city ids 0..10
  assert task.domains[1] == ("dusseldorf", "hamburg", "jena", "monchengladbach", "stuttgart")
  assert task.domains[2] == ("ulm", "zurich", "frankfurt", "lindau", "munster")
  assert len(tasks.get_task("cityscapes", "11-1").steps) == 11
  assert len(tasks.get_task("cityscapes", "1-1").steps) == 21
  assert len(set(tasks.CITYSCAPES_CITIES)) == 21
  assert tasks.CITYSCAPES_CITIES[-3:] == ("frankfurt", "lindau", "munster")  # the val folder
  assert len(tasks.CITYSCAPES_CITIES) == 21
  assert tasks.get_task("cityscapes", "offline").steps == (tuple(range(19)),)


def test_unknown_task_and_dataset_list_valid_names():
  with pytest.raises(ValueError, match=r"unknown task '15-2' for dataset 'voc'.*15-1.*10-5-5"):
    tasks.get_task("voc", "15-2")
  with pytest.raises(ValueError, match=r"valid tasks:.*100-50"):
    tasks.get_task("ade", "15-1")
  with pytest.raises(ValueError, match=r"unknown dataset 'coco'.*voc, ade, cityscapes"):
    tasks.get_task("coco", "15-1")
  with pytest.raises(ValueError, match="21 label ids"):
    tasks.get_task("voc", "15-1", num_classes=20)


def test_class_order():
  order = [3, 1, 2, 5, 4]
  task = tasks.get_task("synthetic", "2-1", num_classes=6, class_order=order)
  assert task.steps == ((0, 3, 1), (2,), (5,), (4,))
  assert tasks.get_task("synthetic", "2-1", num_classes=6, class_order=[0] + order) == task
  np.testing.assert_array_equal(tasks.channel_order(task, 2), [0, 3, 1, 2, 5])
  voc_order = list(range(20, 0, -1))
  voc = tasks.get_task("voc", "15-5", class_order=voc_order)
  assert voc.steps[1] == (5, 4, 3, 2, 1)


@pytest.mark.parametrize("bad_order", [[1, 2, 3, 4], [1, 2, 3, 4, 4], [1, 2, 3, 4, 6],
                                       [1, 0, 2, 3, 4, 5]])
def test_bad_class_order(bad_order):
  with pytest.raises(ValueError, match="class_order must be a permutation of 1..5"):
    tasks.get_task("synthetic", "2-1", num_classes=6, class_order=bad_order)


def test_channel_helpers():
  task = tasks.get_task("voc", "15-1")
  assert tasks.num_old_classes(task, 0) == 0
  assert tasks.num_old_classes(task, 1) == 16
  assert tasks.num_old_classes(task, 3) == 18
  assert tasks.classes_per_step(task, 2) == (16, 1, 1)
  assert tasks.classes_seen(task, 1) == tuple(range(17))
  np.testing.assert_array_equal(tasks.channel_order(task, 5), np.arange(21))
  with pytest.raises(ValueError, match="outside task"):
    tasks.classes_seen(task, 6)


# --- label transforms ----------------------------------------------------------------------

LABEL = np.array([[0, 1, 15, 16],
                  [17, 18, 20, 255]], dtype=np.uint8)


def _apply(lut):
  return tasks.apply_label_lut(LABEL, lut, 21, name="label.png")


def test_train_lut_step0():
  task = tasks.get_task("voc", "15-1")
  expected = [[0, 1, 15, 0], [0, 0, 0, 255]]  # future classes -> background
  np.testing.assert_array_equal(_apply(tasks.train_label_lut(task, 0, False)), expected)
  expected_void_bg = [[0, 1, 15, 0], [0, 0, 0, 0]]
  np.testing.assert_array_equal(_apply(tasks.train_label_lut(task, 0, True)), expected_void_bg)


def test_train_lut_step2():
  task = tasks.get_task("voc", "15-1")  # step 2 introduces class 17
  expected = [[0, 0, 0, 0], [17, 0, 0, 255]]  # old (1, 15, 16) and future (18, 20) -> 0
  lut = tasks.train_label_lut(task, 2, void_to_background=False)
  assert lut.dtype == np.uint8 and lut.shape == (256,)
  np.testing.assert_array_equal(_apply(lut), expected)
  np.testing.assert_array_equal(_apply(tasks.train_label_lut(task, 2, True))[1, 3], 0)


def test_test_lut():
  task = tasks.get_task("voc", "15-1")
  np.testing.assert_array_equal(_apply(tasks.test_label_lut(task, 0)),
                                [[0, 1, 15, 255], [255, 255, 255, 255]])
  np.testing.assert_array_equal(_apply(tasks.test_label_lut(task, 2)),
                                [[0, 1, 15, 16], [17, 255, 255, 255]])
  np.testing.assert_array_equal(_apply(tasks.test_label_lut(task, 2, ignore_background=True)),
                                [[255, 1, 15, 16], [17, 255, 255, 255]])
  # PLOP's code: classes not seen yet (18, 20) are scored as background; void stays void.
  np.testing.assert_array_equal(
      _apply(tasks.test_label_lut(task, 2, unseen_as_background=True)),
      [[0, 1, 15, 16], [17, 0, 0, 255]])
  np.testing.assert_array_equal(
      _apply(tasks.test_label_lut(task, 2, ignore_background=True, unseen_as_background=True)),
      [[255, 1, 15, 16], [17, 255, 255, 255]])


def test_luts_map_classes_to_channels_under_a_class_order():
  task = tasks.get_task("synthetic", "2-1", num_classes=6, class_order=[3, 1, 2, 5, 4])
  label = np.array([0, 1, 2, 3, 4, 5, 255], dtype=np.uint8)
  # channels at step 2: [0, 3, 1, 2, 5] -> class 3 is channel 1, class 5 channel 4
  np.testing.assert_array_equal(
      tasks.apply_label_lut(label, tasks.train_label_lut(task, 2, False), 6),
      [0, 0, 0, 0, 0, 4, 255])
  np.testing.assert_array_equal(
      tasks.apply_label_lut(label, tasks.test_label_lut(task, 2), 6),
      [0, 2, 3, 1, 255, 4, 255])


def test_domain_luts_are_identity():
  task = tasks.get_task("cityscapes", "11-5")
  label = np.array([0, 5, 18, 255], dtype=np.uint8)
  for step in (0, 2):
    for lut in (tasks.train_label_lut(task, step, True), tasks.test_label_lut(task, step)):
      np.testing.assert_array_equal(tasks.apply_label_lut(label, lut, 19), label)


def test_apply_label_lut_rejects_out_of_range_values():
  task = tasks.get_task("voc", "15-1")
  lut = tasks.test_label_lut(task, 5)
  bad = np.array([[0, 21], [254, 255]], dtype=np.uint8)
  with pytest.raises(ValueError, match=r"'2007_000032.png'.*\[21, 254\]"):
    tasks.apply_label_lut(bad, lut, 21, name="2007_000032.png")
  with pytest.raises(ValueError, match=r"\[-1\]"):
    tasks.apply_label_lut(np.array([-1, 3]), lut, 21, name="x")
  out = tasks.apply_label_lut(np.array([3, 255], dtype=np.int32), lut, 21)
  assert out.dtype == np.uint8 and out.tolist() == [3, 255]


# --- image filters -------------------------------------------------------------------------

def test_train_filters():
  task = tasks.get_task("voc", "15-1")
  with_future_class = np.array([0, 5, 16, 18, 255])
  only_background = np.array([0, 255])
  only_old = np.array([0, 3])
  # step 1 introduces 16
  assert tasks.keep_train_image(with_future_class, task, 1, overlap=True)
  assert not tasks.keep_train_image(with_future_class, task, 1, overlap=False)
  assert tasks.keep_train_image(np.array([0, 5, 16, 255]), task, 1, overlap=False)
  assert not tasks.keep_train_image(only_background, task, 1, overlap=True)
  assert not tasks.keep_train_image(only_old, task, 1, overlap=True)
  assert not tasks.keep_train_image(only_background, task, 0, overlap=True)
  # step 0: background alone does not count; a future class drops the image when disjoint
  assert tasks.keep_train_image(np.array([0, 3, 20]), task, 0, overlap=True)
  assert not tasks.keep_train_image(np.array([0, 3, 20]), task, 0, overlap=False)
  assert not tasks.keep_train_image(np.array([0, 20]), task, 0, overlap=True)


def test_test_filter():
  task = tasks.get_task("voc", "15-1")
  assert not tasks.keep_test_image(np.array([0, 255]), task, 5)
  assert not tasks.keep_test_image(np.array([0, 18]), task, 2)
  assert tasks.keep_test_image(np.array([0, 17]), task, 2)
  assert tasks.keep_test_image(np.array([4, 18]), task, 0)


def test_domain_filters():
  task = tasks.get_task("cityscapes", "11-5")
  assert tasks.keep_domain_image("aachen", task, 0, "train")
  assert not tasks.keep_domain_image("aachen", task, 1, "train")
  assert tasks.keep_domain_image("aachen", task, 1, "test")
  assert tasks.keep_domain_image("jena", task, 1, "train")  # in step 1 (city ids 11-15)
  assert not tasks.keep_domain_image("zurich", task, 1, "val")
  assert tasks.keep_domain_image("zurich", task, 2, "val")
  with pytest.raises(ValueError, match="unknown city 'paris'"):
    tasks.keep_domain_image("paris", task, 0, "train")
  assert tasks.keep_train_image(np.array([0, 255]), task, 1, overlap=False)  # road counts
  assert not tasks.keep_test_image(np.array([255]), task, 1)


def test_step_indices():
  task = tasks.get_task("voc", "15-1")
  classes = [np.array([0, 16]), np.array([0, 255]), np.array([16, 19]), np.array([1])]
  overlapped = tasks.step_indices(
      classes, lambda c: tasks.keep_train_image(c, task, 1, overlap=True))
  disjoint = tasks.step_indices(
      classes, lambda c: tasks.keep_train_image(c, task, 1, overlap=False))
  np.testing.assert_array_equal(overlapped, [0, 2])
  np.testing.assert_array_equal(disjoint, [0])

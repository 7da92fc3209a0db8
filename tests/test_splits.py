"""Per-step image lists: filters, the on-disk cache and its invalidation, domain splits."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from gsc_jax import tasks
from gsc_jax.data import splits
from gsc_jax.tools import check_voc_counts
from tests import dataset_trees

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeSource:
  """Labels given as class sets; ``fingerprint`` changes with ``version``."""

  def __init__(self, classes_per_image, split="train", version="1", cities=None):
    self.classes_per_image = [list(c) for c in classes_per_image]
    self.split, self.version, self.cities = split, version, cities
    self.num_classes = 21
    self.reads = 0

  def __len__(self):
    return len(self.classes_per_image)

  def name(self, index):
    return f"img{index:03d}"

  def city(self, index):
    return self.cities[index]

  def read_label(self, index):
    self.reads += 1
    return np.asarray(self.classes_per_image[index], np.uint8).reshape(1, -1)

  def fingerprint(self):
    return f"{self.version:0>16}"


def _config(tmp_path, overlap=True, dataset="voc", task="15-1"):
  config = ml_collections.ConfigDict({
      "dataset": dataset, "task": task, "class_order": "", "overlap": overlap,
      "data": {"split_cache_dir": str(tmp_path / "cache"), "domain_test_fraction": 0.2,
               "domain_split_seed": 1}})
  return config


TRAIN = [[0, 1], [0, 16], [0, 1, 16], [0, 17, 255], [0, 16, 18], [0, 20]]
VAL = [[0, 1], [0, 16], [0, 19], [255]]


def test_lists_follow_the_filters(tmp_path):
  task = tasks.get_task("voc", "15-1")
  lists = splits.StepLists(_config(tmp_path), task, FakeSource(TRAIN), FakeSource(VAL, "val"))
  np.testing.assert_array_equal(lists.train(0), [0, 2])
  np.testing.assert_array_equal(lists.train(1), [1, 2, 4])  # overlapped: 18 is future
  np.testing.assert_array_equal(lists.test(1), [0, 1])
  np.testing.assert_array_equal(lists.test(5), [0, 1, 2])
  disjoint = splits.StepLists(_config(tmp_path, overlap=False), task, FakeSource(TRAIN),
                              FakeSource(VAL, "val"))
  np.testing.assert_array_equal(disjoint.train(1), [1, 2])


def test_lists_are_cached_and_reused_without_reading_labels(tmp_path):
  task = tasks.get_task("voc", "15-1")
  first = splits.StepLists(_config(tmp_path), task, FakeSource(TRAIN), FakeSource(VAL, "val"))
  expected = first.train(1)
  cache_dir = tmp_path / "cache" / "voc" / "train-0000000000000001"
  record = json.loads((cache_dir / "train_15-1_natural_ov_step1.json").read_text())
  assert record["names"] == ["img001", "img002", "img004"]
  assert record["content_hash"] == splits.content_hash(record["names"])
  assert (record["dataset"], record["task"], record["overlap"], record["step"]) == (
      "voc", "15-1", True, 1)
  assert (cache_dir / "label_classes.npz").exists()

  source = FakeSource(TRAIN)
  again = splits.StepLists(_config(tmp_path), task, source, FakeSource(VAL, "val"))
  np.testing.assert_array_equal(again.train(1), expected)
  np.testing.assert_array_equal(again.train(2), [3])  # new step: the cached scan is used
  assert source.reads == 0


def test_changed_data_is_not_read_from_the_cache(tmp_path):
  task = tasks.get_task("voc", "15-1")
  splits.StepLists(_config(tmp_path), task, FakeSource(TRAIN), None).train(1)
  changed = [[0, 1]] * 6  # a new version of the labels: nothing has class 16 any more
  lists = splits.StepLists(_config(tmp_path), task, FakeSource(changed, version="2"), None)
  assert len(lists.train(1)) == 0


def test_a_tampered_cache_entry_is_computed_again(tmp_path, capsys):
  task = tasks.get_task("voc", "15-1")
  splits.StepLists(_config(tmp_path), task, FakeSource(TRAIN), None).train(1)
  path = (tmp_path / "cache" / "voc" / "train-0000000000000001"
          / "train_15-1_natural_ov_step1.json")
  record = json.loads(path.read_text())
  record["indices"] = [0, 5]
  path.write_text(json.dumps(record))
  lists = splits.StepLists(_config(tmp_path), task, FakeSource(TRAIN), None)
  np.testing.assert_array_equal(lists.train(1), [1, 2, 4])
  assert "does not match the data" in capsys.readouterr().err


def test_sources_without_fingerprint_are_not_cached(tmp_path):
  class Uncached(FakeSource):
    def fingerprint(self):
      return None
  task = tasks.get_task("voc", "15-1")
  lists = splits.StepLists(_config(tmp_path), task, Uncached(TRAIN), None)
  np.testing.assert_array_equal(lists.train(1), [1, 2, 4])
  assert not os.path.exists(tmp_path / "cache")


def test_progress_bar(capsys):
  assert list(splits.progress(range(4), 4, "scanning", every_seconds=0.0)) == [0, 1, 2, 3]
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 4 and "[####################] 100% 4/4" in lines[-1]


def test_domain_lists_split_each_city_once(tmp_path):
  task = tasks.get_task("cityscapes", "11-5")
  cities = [city for city in tasks.CITYSCAPES_CITIES for _ in range(10)]
  source = FakeSource([[0, 1]] * len(cities), cities=cities)
  config = _config(tmp_path, dataset="cityscapes", task="11-5")
  lists = splits.StepLists(config, task, source, source)
  by_city = lambda indices: {cities[i] for i in indices}
  for step in range(3):
    train, test = lists.train(step), lists.test(step)
    assert by_city(train) == set(task.domains[step])
    assert by_city(test) == {c for cities_ in task.domains[:step + 1] for c in cities_}
    assert len(train) == 8 * len(task.domains[step])  # 80% of each city's 10 images
  all_train = np.concatenate([lists.train(step) for step in range(3)])
  assert len(set(all_train)) == len(all_train)
  assert not set(all_train) & set(lists.test(2))  # nothing trained on is tested on
  assert len(lists.test(2)) == 2 * 21
  np.testing.assert_array_equal(
      splits.domain_indices(source, task, 1, "train", 0.2, 1), lists.train(1))
  assert not np.array_equal(splits.domain_indices(source, task, 0, "train", 0.2, 2),
                            lists.train(0))  # the seed picks the split
  with pytest.raises(ValueError, match="domain_test_fraction"):
    splits.domain_indices(source, task, 0, "train", 1.0, 1)


def test_voc_count_check_compares_with_published_counts():
  # 9,568 images with class 1, none with later classes: 15-5 step 0 matches, step 1 not.
  label_classes = [np.array([0, 1])] * 9568
  rows = {setting: (counted, equal)
          for setting, counted, _, equal in check_voc_counts.compare(label_classes)}
  assert rows["15-5 overlapped"] == ((9568, 0), False)
  assert rows["15-1 overlapped"][0] == (9568, 0, 0, 0, 0, 0)
  label_classes += [np.array([0, 16, 20])] * 10
  assert check_voc_counts.step_counts(label_classes, "15-1", True) == (9568, 10, 0, 0, 0, 10)
  assert check_voc_counts.step_counts(label_classes, "15-1", False) == (9568, 0, 0, 0, 0, 10)


def test_voc_count_check_command_reports_a_mismatch(tmp_path):
  dataset_trees.write_voc_tree(tmp_path / "voc", [[1], [16], [1, 20]], [[1]])
  result = subprocess.run(
      [sys.executable, "-m", "gsc_jax.tools.check_voc_counts", f"--root={tmp_path / 'voc'}",
       f"--split_cache_dir={tmp_path / 'cache'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr
  assert "train_aug: 3 images (published 10,582)" in result.stdout
  line = next(line for line in result.stdout.splitlines() if line.startswith("15-1 overlapped"))
  assert line.split()[2:10] == ["MISMATCH", "counted", "2", "/", "1", "/", "0", "/"]
  assert "published 9568 / 487 / 299 / 491 / 500 / 548" in line

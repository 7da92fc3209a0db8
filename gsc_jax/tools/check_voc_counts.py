"""Checks a VOC tree against the published per-step image counts (docs/algorithm.md 1.2).

  python -m gsc_jax.tools.check_voc_counts --root=/data/VOC2012

Scans the train_aug labels once (cached like a training run's step lists), counts the
training images of every step of 15-5, 15-1 and 19-1, overlapped and disjoint, and
compares them with MiB's published counts. Exit status 0 when every count matches, 1
otherwise: a mismatch means the labels or the list differ from the field's
SegmentationClassAug, and results would not be comparable with published ones.
"""

import sys

from absl import app
from absl import flags

from gsc_jax import tasks
from gsc_jax.data import splits
from gsc_jax.data import voc

# MiB's image counts on train_aug (10,582 images): (task, overlapped) -> images per step.
PUBLISHED_TRAIN_COUNTS = {
    ("15-5", True): (9568, 2145),
    ("15-5", False): (8437, 2145),
    ("15-1", True): (9568, 487, 299, 491, 500, 548),
    ("15-1", False): (8437, 378, 299, 420, 500, 548),
    ("19-1", True): (10410, 548),
    ("19-1", False): (10034, 548),
}
PUBLISHED_NUM_TRAIN_IMAGES = 10582



def step_counts(label_classes, task_name: str, overlap: bool) -> tuple[int, ...]:
  """The number of training images of every step of a VOC task."""
  task = tasks.get_task("voc", task_name)
  return tuple(
      len(tasks.step_indices(label_classes, lambda c: tasks.keep_train_image(
          c, task, step, overlap)))
      for step in range(task.num_steps))


def compare(label_classes) -> list[tuple[str, tuple, tuple, bool]]:
  """(setting, counted, published, equal) for every published setting."""
  rows = []
  for (task_name, overlap), published in PUBLISHED_TRAIN_COUNTS.items():
    counted = step_counts(label_classes, task_name, overlap)
    setting = f"{task_name} {'overlapped' if overlap else 'disjoint'}"
    rows.append((setting, counted, published, counted == published))
  return rows


def main(argv) -> int:
  del argv
  source = voc.VOCSegmentation(flags.FLAGS.root, "train_aug")
  cache_dir = splits.cache_dir(flags.FLAGS.split_cache_dir, "voc", source, source.fingerprint())
  label_classes = splits.label_classes(source, "voc train_aug", cache_dir)
  print(f"train_aug: {len(source):,} images (published {PUBLISHED_NUM_TRAIN_IMAGES:,})")
  rows = compare(label_classes)
  for setting, counted, published, equal in rows:
    status = "ok" if equal else "MISMATCH"
    print(f"{setting:18s} {status:8s} counted {' / '.join(map(str, counted))}"
          + ("" if equal else f"   published {' / '.join(map(str, published))}"))
  matches = len(source) == PUBLISHED_NUM_TRAIN_IMAGES and all(row[3] for row in rows)
  print("every count matches the published ones" if matches else
        "the counts differ from the published ones: check SegmentationClassAug and "
        "train_aug.txt (README, 'Real datasets')")
  return 0 if matches else 1


if __name__ == "__main__":
  # Flags are defined only when this module is the program, so importing it adds none.
  flags.DEFINE_string("root", None, "the VOC tree (data.root)", required=True)
  flags.DEFINE_string("split_cache_dir", splits.DEFAULT_CACHE_ROOT,
                      "where the label scan is cached (data.split_cache_dir)")
  app.run(lambda argv: sys.exit(main(argv)))

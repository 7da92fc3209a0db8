"""Per-step image lists (docs/algorithm.md 1.2), computed from the labels and cached on disk.

Class-incremental tasks select images by the classes in their labels, so every label of
the split must be read once (10,582 PNGs for VOC train_aug, 20,210 for ADE: minutes). Both
the scan and each step's list are cached under ``data.split_cache_dir``:

  <cache>/<dataset>/<split>-<fingerprint>/label_classes.npz
      the distinct label values of every image: one scan per version of the data
  <cache>/<dataset>/<split>-<fingerprint>/<task>_<order>_<ov|dis>_step<t>.json
      {"indices", "names", "content_hash" (sha256 of the names), and the key fields}

The fingerprint (``source.fingerprint()``) covers the list file and the size and time of
every label file, so lists of changed data are never reused. A cached list whose content
hash or names do not match is computed again, with a note; a cache file that cannot be read
(garbled JSON or npz, missing fields) is named in a warning, computed again and rewritten.
Sources without a fingerprint
(the synthetic dataset, whose labels come from code) are scanned in memory only.

Domain-incremental tasks (Cityscapes) select by city. All images of the train and val
folders are pooled (PLOP's protocol); each city's images are split once, with a fixed seed,
into a train part and a test part (``data.domain_test_fraction``). Step t trains on the
train part of its cities and is tested on the test part of every city seen so far. PLOP
instead re-splits the pooled list of each step, so an image it trains on at one step can be
in a later step's test set; the per-city split here avoids that.
"""

import concurrent.futures
import hashlib
import io
import json
import sys
import time
import zipfile
import zlib

import numpy as np

from gsc_jax import errors
from gsc_jax import storage
from gsc_jax import tasks

SCAN_THREADS = 8  # PNG decoding releases the GIL
DEFAULT_CACHE_ROOT = "~/.cache/gsc_jax/splits"  # as data.split_cache_dir in configs/common.py


def progress(iterable, total: int, description: str, every_seconds: float = 10.0):
  """Yields from ``iterable``, printing a progress bar to stderr every ``every_seconds``
  and at the end: ``description [#####-----] 52% 5,500/10,582 12 s, ETA 11 s``."""
  start = last = time.time()
  for count, item in enumerate(iterable, start=1):
    yield item
    now = time.time()
    if now - last >= every_seconds or count == total:
      last = now
      fraction = count / max(total, 1)
      bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
      elapsed = now - start
      eta = elapsed / fraction - elapsed if fraction else 0.0
      print(f"  {description} [{bar}] {100 * fraction:3.0f}% {count:,}/{total:,} "
            f"{elapsed:.0f} s, ETA {eta:.0f} s", file=sys.stderr, flush=True)


def _scan(source, description: str) -> list[np.ndarray]:
  """The sorted distinct label values of every image of ``source``."""
  with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
    values = pool.map(lambda index: np.unique(source.read_label(index)), range(len(source)))
    return list(progress(values, len(source), f"scanning {description} labels"))


def cache_dir(cache_root: str, dataset: str, source, fingerprint: str | None) -> str | None:
  """The cache directory of ``source`` (whose ``fingerprint()`` is given, as it stats
  every label file); None when nothing is cached."""
  if not cache_root or fingerprint is None:
    return None
  return storage.join(cache_root, dataset, f"{source.split}-{fingerprint[:16]}")


def label_classes(source, description: str, source_cache_dir: str | None) -> list[np.ndarray]:
  """The distinct label values of every image, from the cache or a scan (then cached)."""
  path = source_cache_dir and storage.join(source_cache_dir, "label_classes.npz")
  if path and storage.exists(path):
    cached = _read_label_classes(path)
    if cached is not None and len(cached) == len(source):
      return cached
    if cached is not None:
      print(f"note: {path} does not match the {len(source)} images; scanning again",
            file=sys.stderr)
  classes = _scan(source, description)
  if path:
    offsets = np.cumsum([0] + [len(c) for c in classes])
    values = np.concatenate(classes).astype(np.uint8)
    storage.write_with(path, lambda f: np.savez(f, values=values, offsets=offsets))
  return classes


def _warn_corrupt(path: str, reason: str, redo: str) -> None:
  print(f"warning: the split cache file {path} is corrupt ({reason}); {redo} and rewriting "
        "it", file=sys.stderr)


def _read_label_classes(path: str) -> list[np.ndarray] | None:
  """The per-image label values cached in ``path``; None (after a warning naming the
  file) when it cannot be read."""
  try:
    with np.load(io.BytesIO(storage.read_bytes(path))) as cached:
      values, offsets = cached["values"], cached["offsets"]
  except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError,
          zipfile.BadZipFile, zlib.error) as error:  # what a garbled npz raises
    _warn_corrupt(path, f"{type(error).__name__}: {error}", "scanning the labels again")
    return None
  if (values.ndim != 1 or offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0
      or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0)):
    _warn_corrupt(path, "its offsets do not index its values", "scanning the labels again")
    return None
  return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _read_cached_list(path: str, num_images: int) -> dict | None:
  """The cached image list record in ``path``, with in-range integer indices, a names list
  and a content hash; None (after a warning naming the file) when it cannot be read."""
  try:
    cached = json.loads(storage.read_bytes(path).decode("utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    _warn_corrupt(path, f"{type(error).__name__}: {error}", "computing the list again")
    return None
  valid = (isinstance(cached, dict)
           and isinstance(cached.get("indices"), list)
           and all(isinstance(i, int) and 0 <= i < num_images for i in cached["indices"])
           and isinstance(cached.get("names"), list)
           and isinstance(cached.get("content_hash"), str))
  if not valid:
    _warn_corrupt(path, "no valid indices, names and content_hash fields",
                  "computing the list again")
    return None
  return cached


def content_hash(names) -> str:
  return hashlib.sha256("\n".join(names).encode()).hexdigest()


class StepLists:
  """The train and test image indices of every step of ``task``, cached on disk."""

  def __init__(self, config, task: tasks.Task, train_source, test_source):
    self.config, self.task = config, task
    self.sources = {"train": train_source, "test": test_source}
    self._fingerprints, self._classes = {}, {}

  def train(self, step: int) -> np.ndarray:
    return self._indices("train", step)

  def test(self, step: int) -> np.ndarray:
    return self._indices("test", step)

  def _key(self, split: str, step: int) -> dict:
    config = self.config
    return {"dataset": config.dataset, "task": self.task.name,
            "class_order": config.class_order, "overlap": bool(config.overlap),
            "split": split, "step": step}

  def _fingerprint(self, split: str) -> str | None:
    if split not in self._fingerprints:
      self._fingerprints[split] = self.sources[split].fingerprint()
    return self._fingerprints[split]

  def _cache_dir(self, split: str) -> str | None:
    return cache_dir(self.config.data.split_cache_dir, self.config.dataset,
                     self.sources[split], self._fingerprint(split))

  def _cache_path(self, split: str, step: int) -> str | None:
    source_cache_dir = self._cache_dir(split)
    if source_cache_dir is None:
      return None
    order = zlib.crc32(self.config.class_order.encode()) if self.config.class_order else "natural"
    overlap = "ov" if self.config.overlap else "dis"
    name = f"{split}_{self.task.name}_{order}_{overlap}_step{step}.json"
    return storage.join(source_cache_dir, name)

  def _indices(self, split: str, step: int) -> np.ndarray:
    source = self.sources[split]
    path = self._cache_path(split, step)
    cached = _read_cached_list(path, len(source)) if path and storage.exists(path) else None
    if cached is not None:
      names = [source.name(i) for i in cached["indices"]]
      if names == cached["names"] and content_hash(names) == cached["content_hash"]:
        return np.asarray(cached["indices"], np.int64)
      print(f"note: the cached image list {path} does not match the data; computing it "
            "again", file=sys.stderr)
    indices = self._compute(split, step)
    if path:
      names = [source.name(i) for i in indices]
      record = {**self._key(split, step), "source_fingerprint": self._fingerprint(split),
                "num_images": len(names), "content_hash": content_hash(names),
                "indices": indices.tolist(), "names": names}
      storage.write_text(path, json.dumps(record))
    return indices

  def _compute(self, split: str, step: int) -> np.ndarray:
    task, source = self.task, self.sources[split]
    if task.is_domain_incremental:
      return domain_indices(source, task, step, split, self.config.data.domain_test_fraction,
                            self.config.data.domain_split_seed)
    if split not in self._classes:
      self._classes[split] = label_classes(
          source, f"{self.config.dataset} {source.split}", self._cache_dir(split))
    classes = self._classes[split]
    if split == "train":
      keep = lambda c: tasks.keep_train_image(c, task, step, self.config.overlap)
    else:
      keep = lambda c: tasks.keep_test_image(c, task, step)
    return tasks.step_indices(classes, keep)


def domain_indices(source, task: tasks.Task, step: int, split: str, test_fraction: float,
                   seed: int) -> np.ndarray:
  """Images of a domain-incremental step: the train part of the step's cities ("train"),
  or the test part of every city seen so far ("test"). Each city's images, sorted by name,
  are permuted with a generator seeded by (seed, city) and the first
  ``round((1 - test_fraction) * n)`` form its train part."""
  if not 0.0 < test_fraction < 1.0:
    raise errors.InputError(f"data.domain_test_fraction must be in (0, 1), got {test_fraction}")
  cities = np.asarray([source.city(i) for i in range(len(source))])
  names = np.asarray([source.name(i) for i in range(len(source))])
  selected = []
  for city_index, city in enumerate(tasks.CITYSCAPES_CITIES):
    if not tasks.keep_domain_image(city, task, step, split):
      continue
    members = np.flatnonzero(cities == city)
    members = members[np.argsort(names[members], kind="stable")]
    rng = np.random.default_rng([seed, city_index])
    members = members[rng.permutation(len(members))]
    num_train = int(round((1.0 - test_fraction) * len(members)))
    selected.append(members[:num_train] if split == "train" else members[num_train:])
  if not selected:
    return np.zeros(0, np.int64)
  return np.sort(np.concatenate(selected)).astype(np.int64)

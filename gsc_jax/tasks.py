"""Incremental tasks: which classes each step introduces, and what each step may see.

This module is the protocol of docs/algorithm.md 1.1-1.3 as pure numpy functions:

* ``get_task`` builds a ``Task`` from a dataset and a task name (the MiB / PLOP names),
  optionally with a non-natural class order.
* ``channel_order`` / ``classes_seen`` / ``num_old_classes`` / ``classes_per_step`` describe
  the model's output channels at a step: the classes of steps 0..t concatenated in step
  order. Class ids are never assumed contiguous within a step, so every label transform
  maps a raw class id to its CHANNEL index (its position in ``channel_order``).
* ``train_label_lut`` / ``test_label_lut`` / ``apply_label_lut`` are the label transforms
  (the "background shift" of docs/algorithm.md 1.3).
* ``keep_train_image`` / ``keep_test_image`` / ``keep_domain_image`` are the image filters
  (docs/algorithm.md 1.2, MiB semantics).

Cityscapes is domain-incremental: its 19 train ids (0 = "road" .. 18 = "bicycle"; there is
NO background class) are all learnt at step 0 and every later step adds new cities, not new
classes. The 21 train+val cities are taken in PLOP's order (``CITYSCAPES_CITIES``).
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from gsc_jax import errors

IGNORE_LABEL = 255
BACKGROUND = 0
LUT_SIZE = 256  # label images are uint8

# The 21 Cityscapes train+val cities in the order of the domain steps: PLOP's city ids 0..20
# (its dataset/cityscapes_domain.py), the 18 train-folder cities first, then the 3 val ones.
CITYSCAPES_CITIES = (
    "aachen", "bremen", "darmstadt", "erfurt", "hanover", "krefeld", "strasbourg",
    "tubingen", "weimar", "bochum", "cologne", "dusseldorf", "hamburg", "jena",
    "monchengladbach", "stuttgart", "ulm", "zurich", "frankfurt", "lindau", "munster")

DATASET_NUM_CLASSES = {"voc": 21, "ade": 151, "cityscapes": 19}
# Datasets whose every task is domain-incremental (steps add cities, not classes).
DOMAIN_INCREMENTAL_DATASETS = ("cityscapes",)

# Step sizes of every class-incremental task; the first size counts background 0.
VOC_TASKS = {
    "offline": (21,),
    "19-1": (20, 1),
    "15-5": (16, 5),
    "15-1": (16,) + (1,) * 5,
    "10-1": (11,) + (1,) * 10,
    "5-3": (6,) + (3,) * 5,
    "10-5-5": (11, 5, 5),
}
ADE_TASKS = {
    "offline": (151,),
    "100-50": (101, 50),
    "100-10": (101,) + (10,) * 5,
    "100-5": (101,) + (5,) * 10,
    "50-50": (51, 50, 50),
}
# Number of cities of each domain step (21 cities in all).
CITYSCAPES_DOMAIN_TASKS = {
    "offline": (21,),
    "11-5": (11, 5, 5),
    "11-1": (11,) + (1,) * 10,
    "1-1": (1,) * 21,
}
TASK_ALIASES = {
    "voc": {"15-5s": "15-1"},   # MiB's name for 15-1
    "ade": {"50": "50-50"},
}


@dataclasses.dataclass(frozen=True)
class Task:
  """An incremental task.

  ``steps[t]`` lists the class ids introduced at step t (step 0 includes background 0); the
  steps partition ``range(num_classes)``. For a domain-incremental task ``domains[t]`` lists
  the cities of step t, ``steps[0]`` holds every class and later steps are empty.
  """
  dataset: str                          # "voc" | "ade" | "cityscapes" | "synthetic"
  name: str                             # canonical name, e.g. "15-1" (aliases resolved)
  steps: tuple[tuple[int, ...], ...]
  num_classes: int                      # label ids incl. background (voc 21, ade 151, cityscapes 19)
  domains: tuple[tuple[str, ...], ...] | None = None

  def __post_init__(self):
    _check_partition(self.steps, self.num_classes, self.name)
    if self.domains is not None and len(self.domains) != len(self.steps):
      raise errors.InputError(f"task {self.name!r}: {len(self.domains)} city groups for "
                       f"{len(self.steps)} steps")

  @property
  def num_steps(self) -> int:
    return len(self.steps)

  @property
  def is_domain_incremental(self) -> bool:
    return self.domains is not None


def _check_partition(steps, num_classes: int, name: str) -> None:
  """The steps must be a disjoint cover of 0..num_classes-1 with 0 in step 0."""
  if not 1 <= num_classes < IGNORE_LABEL:
    raise errors.InputError(f"task {name!r}: num_classes={num_classes} must be in [1, "
                     f"{IGNORE_LABEL}) (labels are uint8 and {IGNORE_LABEL} means ignore)")
  if not steps or BACKGROUND not in steps[0]:
    raise errors.InputError(f"task {name!r}: step 0 must contain class {BACKGROUND}")
  all_classes = [c for step in steps for c in step]
  if sorted(all_classes) != list(range(num_classes)):
    raise errors.InputError(f"task {name!r}: the steps {steps} do not partition the classes "
                     f"0..{num_classes - 1}")


# --- building tasks ------------------------------------------------------------------------

def get_task(dataset: str, name: str, num_classes: int | None = None,
             class_order: Sequence[int] | None = None) -> Task:
  """The task ``name`` of ``dataset`` (docs/algorithm.md 1.1).

  ``num_classes`` is required for "synthetic" (default 21) and, for the real datasets, must
  be None or equal to the dataset's number of label ids. ``class_order`` is an optional
  permutation of the classes 1..num_classes-1 (0 may be given first): the task keeps its
  step sizes but takes its classes from this order instead of the natural one.
  """
  if dataset in DOMAIN_INCREMENTAL_DATASETS:
    _check_dataset_num_classes(dataset, num_classes)
    if class_order is not None:
      raise errors.InputError("class_order does not apply to cityscapes: its tasks are "
                       "domain-incremental and learn every class at step 0")
    return _cityscapes_task(_resolve_name(dataset, name, CITYSCAPES_DOMAIN_TASKS))
  if dataset in ("voc", "ade"):
    _check_dataset_num_classes(dataset, num_classes)
    num_classes = DATASET_NUM_CLASSES[dataset]
    registry = VOC_TASKS if dataset == "voc" else ADE_TASKS
    name = _resolve_name(dataset, name, registry)
    step_sizes = registry[name]
  elif dataset == "synthetic":
    num_classes = 21 if num_classes is None else int(num_classes)
    name, step_sizes = _synthetic_step_sizes(name, num_classes)
  else:
    raise errors.InputError(f"unknown dataset {dataset!r}; valid datasets: "
                     "voc, ade, cityscapes, synthetic")
  ordered_classes = _ordered_classes(class_order, num_classes)
  return Task(dataset=dataset, name=name, steps=_split(ordered_classes, step_sizes),
              num_classes=num_classes)


def valid_task_names(dataset: str, num_classes: int | None = None) -> list[str]:
  """The task names accepted for ``dataset`` (aliases included)."""
  if dataset == "synthetic":
    num_classes = 21 if num_classes is None else num_classes
    names = ["offline", "A-B (step 0 = classes 0..A, then groups of B)"]
    if num_classes == DATASET_NUM_CLASSES["voc"]:
      names += list(VOC_TASKS) + list(TASK_ALIASES["voc"])
    if num_classes == DATASET_NUM_CLASSES["ade"]:
      names += list(ADE_TASKS) + list(TASK_ALIASES["ade"])
    return list(dict.fromkeys(names))
  registry = {"voc": VOC_TASKS, "ade": ADE_TASKS, "cityscapes": CITYSCAPES_DOMAIN_TASKS}
  if dataset not in registry:
    raise errors.InputError(f"unknown dataset {dataset!r}; valid datasets: "
                     "voc, ade, cityscapes, synthetic")
  return list(registry[dataset]) + list(TASK_ALIASES.get(dataset, {}))


def _unknown_task(dataset: str, name: str, num_classes: int | None = None) -> errors.InputError:
  names = valid_task_names(dataset, num_classes)
  return errors.InputError(f"unknown task {name!r} for dataset {dataset!r}; "
                           f"{errors.did_you_mean(name, names)}valid tasks: {', '.join(names)}")


def _resolve_name(dataset: str, name: str, registry: dict) -> str:
  """The canonical task name (aliases such as 15-5s resolved); unknown names are errors."""
  name = TASK_ALIASES.get(dataset, {}).get(name, name)
  if name not in registry:
    raise _unknown_task(dataset, name)
  return name


def _check_dataset_num_classes(dataset: str, num_classes: int | None) -> None:
  expected = DATASET_NUM_CLASSES[dataset]
  if num_classes is not None and int(num_classes) != expected:
    raise errors.InputError(f"dataset {dataset!r} has {expected} label ids, got "
                     f"num_classes={num_classes}")


def _synthetic_step_sizes(name: str, num_classes: int) -> tuple[str, tuple[int, ...]]:
  """Synthetic tasks: the VOC names (21 classes), the ADE names (151), "offline", "A-B"."""
  if name == "offline":
    return name, (num_classes,)
  for dataset, registry in (("voc", VOC_TASKS), ("ade", ADE_TASKS)):
    if num_classes == DATASET_NUM_CLASSES[dataset]:
      canonical = TASK_ALIASES[dataset].get(name, name)
      if canonical in registry:
        return canonical, registry[canonical]
  return name, _generic_step_sizes(name, num_classes)


def _generic_step_sizes(name: str, num_classes: int) -> tuple[int, ...]:
  """ "A-B": step 0 = classes 0..A, then consecutive groups of B up to num_classes-1."""
  parts = name.split("-")
  if len(parts) != 2 or not all(part.isdigit() for part in parts):
    raise _unknown_task("synthetic", name, num_classes)
  first, group = int(parts[0]), int(parts[1])
  num_later_classes = num_classes - 1 - first
  if first < 1 or group < 1 or num_later_classes < 1:
    raise errors.InputError(f"task {name!r} does not fit {num_classes} classes: need "
                     f"1 <= A < {num_classes - 1} and B >= 1 in 'A-B'")
  if num_later_classes % group:
    raise errors.InputError(f"task {name!r}: the {num_later_classes} classes after 0..{first} "
                     f"do not split into groups of {group} (num_classes={num_classes})")
  return (first + 1,) + (group,) * (num_later_classes // group)


def _ordered_classes(class_order: Sequence[int] | None, num_classes: int) -> list[int]:
  """Background 0 followed by the classes 1..num_classes-1 in ``class_order`` (or natural)."""
  if class_order is None:
    return list(range(num_classes))
  order = [int(c) for c in class_order]
  if order and order[0] == BACKGROUND:
    order = order[1:]
  expected = set(range(1, num_classes))
  if len(order) != len(expected) or set(order) != expected:
    duplicates = sorted({c for c in order if order.count(c) > 1})
    missing = sorted(expected - set(order))
    extra = sorted(set(order) - expected)
    raise errors.InputError(
        f"class_order must be a permutation of 1..{num_classes - 1} (optionally preceded "
        f"by 0); missing {missing}, unexpected {extra}, repeated {duplicates}")
  return [BACKGROUND] + order


def _split(ordered_classes: list[int], step_sizes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
  """Consecutive slices of ``ordered_classes`` with the given sizes."""
  steps, start = [], 0
  for size in step_sizes:
    steps.append(tuple(ordered_classes[start:start + size]))
    start += size
  return tuple(steps)


def _cityscapes_task(name: str) -> Task:
  """All 19 train ids at step 0; the cities (PLOP's order) split by the task's sizes."""
  city_groups = _split(list(CITYSCAPES_CITIES), CITYSCAPES_DOMAIN_TASKS[name])
  num_classes = DATASET_NUM_CLASSES["cityscapes"]
  steps = (tuple(range(num_classes)),) + ((),) * (len(city_groups) - 1)
  return Task(dataset="cityscapes", name=name, steps=steps, num_classes=num_classes,
              domains=city_groups)


# --- the output channels of a step -----------------------------------------------------------

def _check_step(task: Task, step: int) -> None:
  if not 0 <= step < len(task.steps):
    raise errors.InputError(f"step {step} is outside task {task.name!r} "
                     f"(steps 0..{len(task.steps) - 1})")


def classes_seen(task: Task, step: int) -> tuple[int, ...]:
  """The classes of steps 0..step, in step order (= the class of each output channel)."""
  _check_step(task, step)
  return tuple(c for classes in task.steps[:step + 1] for c in classes)


def num_old_classes(task: Task, step: int) -> int:
  """K_old: the number of classes seen before ``step``, background included (0 at step 0)."""
  return 0 if step == 0 else len(classes_seen(task, step - 1))


def channel_order(task: Task, step: int) -> np.ndarray:
  """int32 [K]: the class id of each output channel at ``step`` (steps 0..step concatenated)."""
  return np.asarray(classes_seen(task, step), dtype=np.int32)


def classes_per_step(task: Task, step: int) -> tuple[int, ...]:
  """How many classes (channels) each of the steps 0..step adds."""
  _check_step(task, step)
  return tuple(len(classes) for classes in task.steps[:step + 1])


@dataclasses.dataclass(frozen=True)
class StepFacts:
  """What every part of one incremental step needs to know about it, computed once
  (``step_facts``) and passed to the model, the method, the train step and the passes.

  ``classes_per_step`` counts the channels each of steps 0..step adds (its last entry is 0
  on a domain-incremental step, which adds no class); ``num_old_classes`` is K_old,
  ``num_new_classes`` N and ``num_classes`` K = K_old + N (docs/algorithm.md notation).
  """
  step: int
  classes: tuple[int, ...]
  classes_per_step: tuple[int, ...]
  num_old_classes: int
  num_new_classes: int
  num_classes: int
  has_teacher: bool  # step > 0: the previous step's model is the frozen teacher
  channel_classes: tuple[int, ...]  # the class id of each output channel

  @property
  def classifier_sizes(self) -> tuple[int, ...]:
    """The output sizes of the model's per-step classifiers (a step without new classes
    adds none)."""
    return tuple(count for count in self.classes_per_step if count)

  @property
  def teacher_classifier_sizes(self) -> tuple[int, ...]:
    """The classifier sizes of the previous step's model (the teacher)."""
    if not self.has_teacher:
      raise errors.InputError("step 0 has no teacher")
    return tuple(count for count in self.classes_per_step[:-1] if count)


def step_facts(task: Task, step: int) -> StepFacts:
  """The ``StepFacts`` of step ``step`` of ``task``."""
  per_step = classes_per_step(task, step)
  return StepFacts(step=step, classes=tuple(task.steps[step]), classes_per_step=per_step,
                   num_old_classes=num_old_classes(task, step),
                   num_new_classes=per_step[-1],
                   num_classes=sum(per_step), has_teacher=step > 0,
                   channel_classes=classes_seen(task, step))


# --- label transforms (docs/algorithm.md 1.3) -----------------------------------------------------

def _channel_of(task: Task, step: int) -> dict[int, int]:
  return {int(c): channel for channel, c in enumerate(channel_order(task, step))}


def train_label_lut(task: Task, step: int, void_to_background: bool) -> np.ndarray:
  """uint8[256]: raw label value -> training target channel at ``step``.

  Classes introduced at ``step`` -> their channel; every other class (old or future) -> 0
  (background); 255 -> 255, or 0 when ``void_to_background`` (MiB's VOC code). Domain tasks
  train every class at every step, so every class keeps its channel and 255 stays 255 (there
  is no background class in Cityscapes). Values >= num_classes other than 255 -> 255, but
  ``apply_label_lut`` rejects them before the table is read.
  """
  _check_step(task, step)
  lut = np.full(LUT_SIZE, IGNORE_LABEL, dtype=np.uint8)
  channel_of = _channel_of(task, step)
  if task.is_domain_incremental:
    for class_id, channel in channel_of.items():
      lut[class_id] = channel
    return lut
  lut[:task.num_classes] = BACKGROUND
  for class_id in task.steps[step]:
    lut[class_id] = channel_of[class_id]
  lut[IGNORE_LABEL] = BACKGROUND if void_to_background else IGNORE_LABEL
  return lut


def test_label_lut(task: Task, step: int, ignore_background: bool = False,
                   unseen_as_background: bool = False) -> np.ndarray:
  """uint8[256]: raw label value -> evaluation target channel at ``step``.

  Every class seen so far (steps 0..step) -> its channel; classes not seen yet -> 255
  (ignored, MiB's protocol) or, with ``unseen_as_background``, 0 (PLOP's code, whose
  per-step numbers were measured so); 255 -> 255. ``ignore_background`` also ignores class
  0 (MiB's ADE evaluation; PLOP scores ADE class 0 as a class, the default), and then the
  unseen classes mapped to it too.
  """
  lut = np.full(LUT_SIZE, IGNORE_LABEL, dtype=np.uint8)
  if unseen_as_background:
    lut[:task.num_classes] = BACKGROUND
  for class_id, channel in _channel_of(task, step).items():
    lut[class_id] = channel
  if ignore_background:
    lut[lut == BACKGROUND] = IGNORE_LABEL
  return lut


def invalid_label_values(label: np.ndarray, num_classes: int) -> list[int]:
  """The distinct values of ``label`` outside [0, num_classes) other than 255."""
  values = np.unique(np.asarray(label))
  bad = (values < 0) | ((values >= num_classes) & (values != IGNORE_LABEL))
  return [int(v) for v in values[bad]]


def apply_label_lut(label: np.ndarray, lut: np.ndarray, num_classes: int,
                    name: str = "") -> np.ndarray:
  """``lut[label]`` as uint8; raises ValueError naming ``name`` on values outside
  [0, num_classes) other than 255 (they are never silently mapped)."""
  label = np.asarray(label)
  if label.dtype == np.uint8:
    allowed = np.zeros(LUT_SIZE, dtype=bool)
    allowed[:num_classes] = True
    allowed[IGNORE_LABEL] = True
    valid = bool(allowed[label].all())
  else:
    valid = not invalid_label_values(label, num_classes)
  if not valid:
    raise errors.InputError(f"label {name!r} holds values {invalid_label_values(label, num_classes)} "
                     f"outside [0, {num_classes}) other than {IGNORE_LABEL}")
  return np.asarray(lut, dtype=np.uint8)[label.astype(np.intp)]


# --- image filters (docs/algorithm.md 1.2) --------------------------------------------------------

def _labelled_classes(classes_present: Iterable[int]) -> set[int]:
  """The classes an image "contains": its label values minus background 0 and void 255."""
  return {int(c) for c in np.asarray(classes_present).ravel()} - {BACKGROUND, IGNORE_LABEL}


def keep_train_image(classes_present, task: Task, step: int, overlap: bool) -> bool:
  """Whether a training image belongs to ``step`` (MiB's filters).

  ``classes_present``: the distinct raw label values of the image. Background 0 and 255
  never count. Overlapped: keep if the image contains a class of the step. Disjoint: keep if
  it contains a class of the step AND every class it contains was introduced at steps
  0..step (images with future classes are dropped). Domain tasks select images by city
  (``keep_domain_image``); here they keep every image with a labelled pixel (any value but
  255, since Cityscapes class 0 "road" is a real class).
  """
  _check_step(task, step)
  if task.is_domain_incremental:
    return _has_labelled_pixel(classes_present)
  contained = _labelled_classes(classes_present)
  if not contained & set(task.steps[step]):
    return False
  return overlap or contained <= set(classes_seen(task, step))


def keep_test_image(classes_present, task: Task, step: int) -> bool:
  """Whether a test image is scored at ``step``: it contains a non-background class seen
  so far (steps 0..step). Domain tasks: every image with a labelled pixel (cities are
  selected by ``keep_domain_image``)."""
  _check_step(task, step)
  if task.is_domain_incremental:
    return _has_labelled_pixel(classes_present)
  return bool(_labelled_classes(classes_present) & set(classes_seen(task, step)))


def _has_labelled_pixel(classes_present) -> bool:
  return bool({int(c) for c in np.asarray(classes_present).ravel()} - {IGNORE_LABEL})


def keep_domain_image(city: str, task: Task, step: int, split: str) -> bool:
  """Domain tasks select by city: "train" uses only the cities of ``step``; "test" (or
  "val") uses every city seen so far (steps 0..step)."""
  _check_step(task, step)
  if not task.is_domain_incremental:
    raise errors.InputError(f"task {task.dataset} {task.name!r} is not domain-incremental")
  all_cities = {c for cities in task.domains for c in cities}
  if city not in all_cities:
    raise errors.InputError(f"unknown city {city!r}; valid cities: {', '.join(sorted(all_cities))}")
  if split == "train":
    return city in task.domains[step]
  if split in ("test", "val"):
    return any(city in cities for cities in task.domains[:step + 1])
  raise errors.InputError(f"unknown split {split!r}; valid splits: train, test, val")


def step_indices(label_classes: Sequence[np.ndarray],
                 keep_fn: Callable[[np.ndarray], bool]) -> np.ndarray:
  """int64 indices of the images whose class set passes ``keep_fn``, e.g.
  ``step_indices(classes, lambda c: keep_train_image(c, task, step, overlap=True))``."""
  return np.flatnonzero([bool(keep_fn(classes)) for classes in label_classes]).astype(np.int64)


def task_of(config) -> Task:
  """The config's task; an unknown task or a bad class order is an error naming valid ones."""
  class_order = None
  if config.class_order:
    try:
      class_order = [int(part) for part in config.class_order.split(",")]
    except ValueError:
      raise errors.InputError(f"class_order {config.class_order!r} must be comma-separated "
                              "integers") from None
  return get_task(config.dataset, config.task, num_classes=config.data.num_classes,
                  class_order=class_order)

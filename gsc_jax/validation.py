"""Every config value checked before any compute, from one table.

``FIELDS`` gives each field's rule: a set of valid choices, or a type with a range.
``validate`` also checks the rules between fields (``CROSS_FIELD_RULES``) and what depends
on the machine (the global batch must split evenly over the devices). Each error names the
field, its value and what is valid. The method switches themselves are checked when the
preset is resolved (gsc_jax/methods/__init__.py: a switch the method does not read); the
options of the switches (``gsc.tau``, ``pseudo.thresholds``, ...) here, once every value
is valid: one the user set where the method never reads it is refused
(``methods.unread_options``).
"""

import dataclasses
import math

from gsc_jax import compensation
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import pseudo_labels
from gsc_jax import tasks
from gsc_jax.data import pipeline
from gsc_jax.methods import gsc as gsc_method
from gsc_jax.models import incremental
from gsc_jax.models import resnet


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of ``values`` (a tuple, or a function giving it when the valid set is open)."""
  values: object

  def problem(self, value):
    values = self.values() if callable(self.values) else self.values
    if value not in values:
      return f"must be one of: {', '.join(map(str, values))}{_hint(value, values)}"
    return None


def _hint(value, values) -> str:
  """"; did you mean X?" for a text close to a valid choice."""
  hint = errors.did_you_mean(value, values) if isinstance(value, str) else ""
  return f"; {hint.strip()}" if hint else ""


@dataclasses.dataclass(frozen=True)
class Number:
  """A number of ``kind`` (int or float) in [minimum, maximum]; an exclusive bound is
  given by ``above`` / ``below``."""
  kind: type = float
  minimum: float | None = None
  maximum: float | None = None
  above: float | None = None
  below: float | None = None

  def problem(self, value):
    if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float
                                                  else int):
      return f"must be {'a number' if self.kind is float else 'an integer'}"
    if not math.isfinite(value):
      return "must be finite"
    bounds = []
    if self.minimum is not None and value < self.minimum:
      bounds.append(f">= {self.minimum}")
    if self.maximum is not None and value > self.maximum:
      bounds.append(f"<= {self.maximum}")
    if self.above is not None and value <= self.above:
      bounds.append(f"> {self.above}")
    if self.below is not None and value >= self.below:
      bounds.append(f"< {self.below}")
    return f"must be {' and '.join(bounds)}" if bounds else None


@dataclasses.dataclass(frozen=True)
class OffOrPositive:
  """-1 (off) or an integer >= 1."""

  def problem(self, value):
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
      return "must be -1 (off) or an integer >= 1"
    return None


@dataclasses.dataclass(frozen=True)
class Flag:
  def problem(self, value):
    return None if isinstance(value, bool) else "must be true or false"


@dataclasses.dataclass(frozen=True)
class Text:
  def problem(self, value):
    return None if isinstance(value, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class PositiveIntegers:
  def problem(self, value):
    if (not isinstance(value, (tuple, list)) or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
      return "must be a non-empty list of integers >= 1"
    return None


POSITIVE_INTEGER = Number(int, minimum=1)
NON_NEGATIVE_INTEGER = Number(int, minimum=0)
POSITIVE = Number(float, above=0.0)
NON_NEGATIVE = Number(float, minimum=0.0)
FRACTION = Number(float, minimum=0.0, maximum=1.0)

FIELDS = {
    "dataset": Choice(pipeline.DATASETS),
    "task": Text(),
    "class_order": Text(),
    "overlap": Flag(),
    "method": Choice(methods.names),
    "seed": NON_NEGATIVE_INTEGER,  # numpy seed sequences take no negative entry
    "workdir": Text(),
    "first_step": NON_NEGATIVE_INTEGER,
    "last_step": Number(int, minimum=-1),
    "init_step0_from": Text(),
    "log_every": POSITIVE_INTEGER,
    "checkpoint_every": POSITIVE_INTEGER,
    "stop_after_iterations": OffOrPositive(),
    "data.source": Choice(pipeline.SOURCES),
    "data.root": Text(),
    "data.tfds_dir": Text(),
    "data.split_cache_dir": Text(),
    "data.domain_test_fraction": Number(float, above=0.0, below=1.0),
    "data.domain_split_seed": NON_NEGATIVE_INTEGER,
    "data.num_classes": Number(int, minimum=2, maximum=255),
    "data.void_to_background": Flag(),
    "data.crop_size": POSITIVE_INTEGER,
    "data.crop_scale_min": POSITIVE,
    "data.crop_scale_max": POSITIVE,
    "data.crop_ratio_min": POSITIVE,
    "data.crop_ratio_max": POSITIVE,
    "data.flip_probability": FRACTION,
    "data.eval_mode": Choice(("center_crop", "full")),
    "data.eval_size": POSITIVE_INTEGER,
    "data.eval_ignore_background": Flag(),
    "data.eval_unseen": Choice(("ignore", "background")),
    "data.eval_batch_size": POSITIVE_INTEGER,
    "data.num_threads": POSITIVE_INTEGER,
    "data.prefetch_batches": NON_NEGATIVE_INTEGER,
    "data.image_size": Number(int, minimum=16),
    "data.num_train_images": POSITIVE_INTEGER,
    "data.num_val_images": POSITIVE_INTEGER,
    "data.dataset_seed": NON_NEGATIVE_INTEGER,
    "model.backbone": Choice(lambda: sorted(resnet.BACKBONES)),
    "model.output_stride": Choice((8, 16)),
    "model.head_channels": POSITIVE_INTEGER,
    "model.new_classifier_init": Choice(incremental.NEW_CLASSIFIER_INITS),
    "model.activation": Choice(tuple(sorted(resnet.ACTIVATIONS))),
    "model.pretrained": Text(),
    "model.compute_dtype": Choice(("float32", "bfloat16")),
    "optim.batch_size": POSITIVE_INTEGER,
    "optim.accumulation_steps": POSITIVE_INTEGER,
    "optim.lr_step0": POSITIVE,
    "optim.lr_incremental": POSITIVE,
    "optim.epochs_step0": POSITIVE_INTEGER,
    "optim.epochs_incremental": POSITIVE_INTEGER,
    "optim.momentum": Number(float, minimum=0.0, below=1.0),
    "optim.nesterov": Flag(),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.poly_power": NON_NEGATIVE,
    "loss.ce": Choice(("plain", "unbiased")),
    "loss.kd_weight": NON_NEGATIVE,
    "loss.kd_alpha": POSITIVE,
    "loss.pod_weight": NON_NEGATIVE,
    "loss.pod_logits_weight": NON_NEGATIVE,
    "loss.pod_scales": PositiveIntegers(),
    "pseudo.entropy": Flag(),
    "pseudo.thresholds": Choice(("histogram", "median")),
    "pseudo.threshold_floor": FRACTION,
    "pseudo.adaptive_factor": Flag(),
    "pseudo.quantile_start": Number(float, above=0.0, maximum=1.0),
    "pseudo.quantile_per_epoch": NON_NEGATIVE,
    "pseudo.quantile_max": Number(float, above=0.0, maximum=1.0),
    "gsc.compensation": Flag(),
    "gsc.groups": Choice(compensation.GROUPINGS),
    "gsc.magnitude": Choice(compensation.MAGNITUDES),
    "gsc.use_exponent": Flag(),
    "gsc.bound": Flag(),
    "gsc.ema_decay": Number(float, minimum=0.0, below=1.0),
    "gsc.relation": Flag(),
    "gsc.relation_form": Choice(("soft_sharp", "temperature")),
    "gsc.soft_label_form": Choice(lambda: tuple(gsc_method.SOFT_LABEL_LOSSES)),
    "gsc.soft_label_weight": NON_NEGATIVE,
    "gsc.sharpening_weight": NON_NEGATIVE,
    "gsc.class_relation": Choice(("off", "fiss", "first")),
    "gsc.class_relation_weight": NON_NEGATIVE,
    "gsc.temperature_kd_weight": NON_NEGATIVE,
    "gsc.soft_temperature": POSITIVE,
    "gsc.sharp_temperature": POSITIVE,
    "gsc.prototypes": Flag(),
    "gsc.prototype_source": Choice(("teacher", "previous_model")),
    "gsc.similarity": Choice(pseudo_labels.SIMILARITIES),
    "gsc.tau": POSITIVE,
    "gsc.relabel": Choice(("filter_then_relabel", "rdp", "first")),
    "gsc.theta": FRACTION,
}


def _cross_field_problems(config) -> list[str]:
  """Rules between fields; each entry names the fields and what to change."""
  problems = []
  data = config.data
  if data.crop_scale_min > data.crop_scale_max:
    problems.append(f"data.crop_scale_min={data.crop_scale_min} is above "
                    f"data.crop_scale_max={data.crop_scale_max}")
  if data.crop_ratio_min > data.crop_ratio_max:
    problems.append(f"data.crop_ratio_min={data.crop_ratio_min} is above "
                    f"data.crop_ratio_max={data.crop_ratio_max}")
  pseudo = config.pseudo
  if pseudo.quantile_start > pseudo.quantile_max:
    problems.append(f"pseudo.quantile_start={pseudo.quantile_start} is above "
                    f"pseudo.quantile_max={pseudo.quantile_max}")
  if config.last_step != -1 and config.first_step > config.last_step:
    problems.append(f"first_step={config.first_step} is after last_step={config.last_step}")
  if data.source == "tfds" and config.dataset != "synthetic" and not data.tfds_dir:
    problems.append("data.source=tfds needs data.tfds_dir (the directory or gs:// path the "
                    "datasets were built into; see docs/tfds.md)")
  return problems


def _accumulation_problems(config, num_devices: int) -> list[str]:
  """Gradient accumulation splits the global batch into ``optim.accumulation_steps``
  micro-batches, each spread over every device: the batch must be divisible by k x devices
  (docs/precision_and_accumulation.md)."""
  batch_size, steps = config.optim.batch_size, config.optim.accumulation_steps
  if steps == 1 or batch_size % (steps * num_devices) == 0:
    return []
  divisor = steps * num_devices
  fitting = [k for k in range(1, batch_size + 1) if batch_size % (k * num_devices) == 0]
  hint = f"set optim.batch_size to a multiple of {divisor}"
  if fitting:
    hint = f"set optim.accumulation_steps to one of {fitting}, or {hint.removeprefix('set ')}"
  return [f"optim.batch_size={batch_size} must be divisible by optim.accumulation_steps x "
          f"devices = {steps} x {num_devices} = {divisor} (each micro-batch is split over "
          f"every device): {hint}"]


def validate(config, num_devices: int, set_options: dict | None = None) -> None:
  """Raises ``errors.InputError`` listing every invalid field (after the preset is
  resolved, so that no field is still unset). ``set_options``: the switch options the user
  set (``methods.options_set``, taken before the preset); one the method never reads is
  refused."""
  problems = []
  for path, rule in FIELDS.items():
    value = methods.field(config, path)
    problem = "is unset" if value is None else rule.problem(value)
    if problem:
      problems.append(f"{path}={value!r} {problem}")
  if not problems:
    problems += _cross_field_problems(config)
    problems += methods.unread_options(config, set_options or {})
    for path in ("optim.batch_size", "data.eval_batch_size"):
      if methods.field(config, path) % num_devices:
        problems.append(f"{path}={methods.field(config, path)} must be divisible by the "
                        f"{num_devices} devices")
    problems += _accumulation_problems(config, num_devices)
    if not problems:
      tasks.task_of(config)  # an unknown task or a bad class order
  if problems:
    raise errors.InputError("invalid config: " + "; ".join(problems))

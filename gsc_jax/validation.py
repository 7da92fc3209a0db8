"""Every config value checked before any compute.

``FIELDS`` gives each protocol field's rule (gsc_jax/rules.py: a set of valid choices, or
a type with a range); each method declares the rules of its own fields in its module
(``methods.field_rules``). ``validate`` also checks the rules between fields
(``_cross_field_problems``) and what depends on the machine (the global batch must split
evenly over the devices). Each error names the field, its value and what is valid. The
method switches themselves are checked when the preset is resolved (gsc_jax/methods/
__init__.py: a switch the method does not read); the options of the switches (``gsc.tau``,
``pseudo.thresholds``, ...) here, once every value is valid: one the user set where the
method never reads it is refused (``methods.unread_options``).
"""

from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import tasks
from gsc_jax.data import pipeline
from gsc_jax.models import incremental
from gsc_jax.models import resnet
from gsc_jax.rules import (Choice, FRACTION, Flag, NON_NEGATIVE, NON_NEGATIVE_INTEGER, Number,
                           OffOrPositive, POSITIVE, POSITIVE_INTEGER, Text)

FIELDS = {
    "dataset": Choice(pipeline.DATASETS),
    "task": Text(),
    "class_order": Text(),
    "overlap": Flag(),
    "method": Choice(lambda: methods.names()),  # looked up when checked
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
}


def _cross_field_problems(config) -> list[str]:
  """Rules between protocol fields (those between a method's fields:
  ``methods.cross_field_problems``); each entry names the fields and what to change."""
  problems = []
  data = config.data
  if data.crop_scale_min > data.crop_scale_max:
    problems.append(f"data.crop_scale_min={data.crop_scale_min} is above "
                    f"data.crop_scale_max={data.crop_scale_max}")
  if data.crop_ratio_min > data.crop_ratio_max:
    problems.append(f"data.crop_ratio_min={data.crop_ratio_min} is above "
                    f"data.crop_ratio_max={data.crop_ratio_max}")
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
  for path, rule in {**FIELDS, **methods.field_rules()}.items():
    value = methods.field(config, path)
    problem = "is unset" if value is None else rule.problem(value)
    if problem:
      problems.append(f"{path}={value!r} {problem}")
  if not problems:
    problems += _cross_field_problems(config) + methods.cross_field_problems(config)
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

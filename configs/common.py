"""Shared pieces of every dataset config.

A config is chosen on the command line as ``--config=configs/<dataset>.py:<ARG>`` where
``ARG`` is ``TASK[,key=value,...]``, for example::

    --config=configs/synthetic.py:15-1,method=ft
    --config=configs/voc.py:15-1,overlap=false,seed=1
    --config=configs/synthetic.py:15-1,optim.epochs_step0=5

Keys are config field paths (``seed``, ``optim.batch_size``, ...). Later, absl's
``--config.optim.batch_size=8`` overrides work as usual. An unknown key or task is an error
that lists the valid ones.

This file holds the protocol's fields; each method declares its own (its switches and their
options: loss weights, pseudo-labels, GSC's parts) in its module,
``gsc_jax/methods/<method>.py``. Fields left as ``None`` placeholders (the method switches,
the void policy, the new-classifier initialisation) are filled from the method's preset
when the run starts; a value set by the user is never replaced.
"""

import ast
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from gsc_jax import errors
from gsc_jax import methods


def parse_arg(arg: str) -> tuple[str, dict[str, str]]:
  """Splits ``TASK[,key=value,...]`` into the task name and a dict of overrides."""
  parts = [part.strip() for part in arg.split(",") if part.strip()]
  if not parts or "=" in parts[0]:
    raise errors.InputError(
        f"config argument {arg!r} must start with a task name, e.g. '15-1' or "
        "'15-1,method=ft'")
  overrides = {}
  for part in parts[1:]:
    if "=" not in part:
      raise errors.InputError(f"config argument part {part!r} is not of the form key=value")
    key, value = part.split("=", 1)
    overrides[key.strip()] = value.strip()
  return parts[0], overrides


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  paths = []
  for key, value in config.items():
    path = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      paths += field_paths(value, path + ".")
    else:
      paths.append(path)
  return paths


def _parse_value(text: str, field_type):
  """Reads a command-line value as the type of the field it overrides."""
  if field_type is bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(f"{text!r} is not a boolean")
  if field_type is str:
    return text
  if field_type in (int, float):
    return field_type(text)
  return ast.literal_eval(text)


def _type_description(key: str, field_type) -> str:
  """What a value of the field ``key`` (of ``field_type``) is, for an error message."""
  descriptions = {int: "an integer", float: "a number", str: "a string",
                  bool: "a boolean (use true or false)",
                  tuple: f"a list such as [2] (a comma ends the value here: give "
                         f"several as --config.{key}='(1,2,4)')"}
  return descriptions.get(field_type, f"a {getattr(field_type, '__name__', field_type)}")


def unknown_key_message(key: str, config: ml_collections.ConfigDict) -> str:
  """The error for a config key that does not exist: the closest existing keys, and the keys
  of the same section (or the top-level keys and sections) rather than all of them."""
  valid_paths = field_paths(config)
  section, _, leaf = key.rpartition(".")
  siblings = sorted(path.removeprefix(f"{section}.") for path in valid_paths
                    if path.rpartition(".")[0] == section)
  if siblings:  # a known section: its keys, matched by the last name
    hint = errors.did_you_mean(leaf, siblings, prefix=f"{section}." if section else "")
    where = f"the keys of {section}" if section else "the top-level keys"
  else:  # an unknown section: matched against every key; the top level and its sections
    hint = errors.did_you_mean(key, valid_paths)
    siblings = sorted({path.split(".")[0] + ("." if "." in path else "")
                       for path in valid_paths})
    where = "the top-level keys and sections"
  return (f"unknown config key {key!r}; {hint}{where}: {', '.join(siblings)} "
          "(every field: configs/common.py and the SWITCHES and OPTIONS of "
          "gsc_jax/methods/<method>.py)")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Sets ``config.<key> = value`` for each override, keeping each field's type."""
  valid_paths = field_paths(config)
  for key, text in overrides.items():
    if key not in valid_paths:
      raise errors.InputError(unknown_key_message(key, config))
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    field_type = node.get_ref(leaf).get_type()
    try:
      node[leaf] = _parse_value(text, field_type)
    except (ValueError, SyntaxError, TypeError):
      raise errors.InputError(
          f"config key {key}={text!r} is not {_type_description(key, field_type)}") from None


def get_base_config(dataset: str, task: str) -> ml_collections.ConfigDict:
  """Every hyperparameter of a run, with the published protocol's values (docs/algorithm.md 1.6)."""
  config = ml_collections.ConfigDict()
  config.dataset = dataset
  config.task = task
  config.class_order = ""            # comma-separated class ids; "" = natural order
  config.overlap = True              # overlapped (True) or disjoint (False) image selection
  config.method = "mib"              # ft | mib | plop | gsc (one module each in gsc_jax/methods/)
  config.seed = 0
  config.workdir = ""                # "" = runs/<dataset>_<task>_<method>_<ov|dis>_seed<seed>
  config.first_step = 0
  config.last_step = -1              # -1 = the task's last step
  config.init_step0_from = ""        # another work dir whose finished step-0 export to reuse
  config.log_every = 20              # iterations between progress lines
  config.checkpoint_every = 200      # iterations between train-state checkpoints
  config.stop_after_iterations = -1  # >0: stop (as if killed) after this many iterations; for resume tests

  config.data = ml_collections.ConfigDict()
  config.data.source = "files"       # files (the tree under data.root) | tfds (docs/tfds.md)
  config.data.root = ""              # dataset directory (real datasets; trees in the README)
  config.data.tfds_dir = ""          # data.source=tfds: directory or gs:// path of the builds
  config.data.split_cache_dir = "~/.cache/gsc_jax/splits"  # step image lists ("": none)
  config.data.domain_test_fraction = 0.2  # Cityscapes domain tasks: test part of each city
  config.data.domain_split_seed = 1
  config.data.num_classes = 21       # label ids incl. background
  config.data.void_to_background = config_dict.placeholder(bool)  # preset: mib True, else False
  config.data.crop_size = 512
  config.data.crop_scale_min = 0.5   # random resized crop area fraction range
  config.data.crop_scale_max = 2.0
  config.data.crop_ratio_min = 3 / 4
  config.data.crop_ratio_max = 4 / 3
  config.data.flip_probability = 0.5
  config.data.eval_mode = "center_crop"  # center_crop (published) | full
  config.data.eval_size = 512        # center_crop: shorter side and crop; full: pad images to this square
  config.data.eval_ignore_background = False  # True: class 0 is not scored (MiB's ADE protocol)
  # Classes not seen yet at test time: ignore (MiB) | background (PLOP's code: scored as 0)
  config.data.eval_unseen = "ignore"
  config.data.eval_batch_size = 24   # global
  config.data.num_threads = 2        # grain read threads per process
  config.data.prefetch_batches = 4
  # Synthetic dataset only.
  config.data.image_size = 128
  config.data.num_train_images = 2000
  config.data.num_val_images = 300
  config.data.dataset_seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet101"   # resnet101 | resnet50 | resnet_tiny
  config.model.output_stride = 16
  config.model.head_channels = 256
  config.model.new_classifier_init = config_dict.placeholder(str)  # mib | random (preset)
  config.model.activation = "leaky_relu"  # leaky_relu (in-place ABN, 0.01) | relu (torchvision)
  config.model.pretrained = ""       # starts step 0; written by gsc_jax.tools.convert_backbone
  # float32 | bfloat16: the dtype of the activations (student and teacher). Parameters, BN
  # statistics, optimiser state, logits, losses and their gradients stay float32
  # (docs/precision_and_accumulation.md).
  config.model.compute_dtype = "float32"

  config.optim = ml_collections.ConfigDict()
  config.optim.batch_size = 24       # global batch, split over all devices
  # Micro-batches per iteration: the train step runs forward/backward on batch_size / k
  # images at a time and applies one update; batch_size must be divisible by k x devices
  # (docs/precision_and_accumulation.md).
  config.optim.accumulation_steps = 1
  config.optim.lr_step0 = 0.01
  config.optim.lr_incremental = 0.001
  config.optim.epochs_step0 = 30
  # Unset: the published per-task value (the method's PUBLISHED), otherwise epochs_step0.
  config.optim.epochs_incremental = config_dict.placeholder(int)
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-4   # added to the gradient before momentum (PyTorch SGD)
  config.optim.poly_power = 0.9      # lr = base * (1 - it / max_it) ** poly_power

  # Each method's own fields (loss.*, pseudo.*, gsc.*: default, rule and meaning in its
  # module, gsc_jax/methods/<method>.py, SWITCHES and OPTIONS).
  methods.add_fields(config)
  return config


def load_config_file(path: str):
  """Imports a config file (e.g. ``configs/synthetic.py``) as a module."""
  if not os.path.exists(path):
    raise errors.MissingFileError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def finalize(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the ``,key=value`` overrides of the config argument."""
  _, overrides = parse_arg(arg)
  apply_overrides(config, overrides)
  return config

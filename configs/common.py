"""Shared pieces of every dataset config.

A config is chosen on the command line as ``--config=configs/<dataset>.py:<ARG>`` where
``ARG`` is ``TASK[,key=value,...]``, for example::

    --config=configs/synthetic.py:15-1,method=ft
    --config=configs/voc.py:15-1,overlap=false,seed=1
    --config=configs/synthetic.py:15-1,optim.epochs_step0=5

Keys are config field paths (``seed``, ``optim.batch_size``, ...). Later, absl's
``--config.optim.batch_size=8`` overrides work as usual. An unknown key or task is an error
that lists the valid ones.

Fields left as ``None`` placeholders (loss weights, the void policy, the new-classifier
initialisation) are filled from the method's preset (``gsc_jax/methods/<method>.py``) when the run
starts; a value set by the user is never replaced.
"""

import ast
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from gsc_jax import errors


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
          "(every field: configs/common.py)")


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

  config.loss = ml_collections.ConfigDict()
  config.loss.ce = config_dict.placeholder(str)         # plain | unbiased (preset)
  config.loss.kd_weight = config_dict.placeholder(float)  # unbiased distillation weight (preset)
  config.loss.kd_alpha = 1.0          # teacher logit scaling in the unbiased distillation
  # PLOP's Local POD (docs/algorithm.md 4): weight of the 4 stage + head tensors, of the logits.
  config.loss.pod_weight = config_dict.placeholder(float)         # preset: plop/gsc 0.01
  config.loss.pod_logits_weight = config_dict.placeholder(float)  # preset: plop/gsc 0.0005
  config.loss.pod_scales = (1, 2, 4)  # tile grids of the local embedding

  # PLOP's entropy pseudo-labels of the old classes hidden in the background.
  config.pseudo = ml_collections.ConfigDict()
  config.pseudo.entropy = config_dict.placeholder(bool)  # preset: plop/gsc True
  config.pseudo.thresholds = "histogram"  # histogram (PLOP's released code) | median (exact)
  config.pseudo.threshold_floor = 0.001   # every per-class entropy threshold is at least this
  config.pseudo.adaptive_factor = True    # weight each image's CE by nu (accepted / background)
  # Threshold quantile of epoch e: min(start + per_epoch * e, max). Preset: plop the median
  # at every epoch (0.5, 0, 0.5); gsc FISS's rising quantile (0.2, 0.1, 0.8).
  config.pseudo.quantile_start = config_dict.placeholder(float)
  config.pseudo.quantile_per_epoch = config_dict.placeholder(float)
  config.pseudo.quantile_max = config_dict.placeholder(float)

  # GSC's three parts (docs/algorithm.md 5; reconstructed from its sister methods' code, see
  # docs/gsc_step.md). Defaults: the second reconstruction; gsc_jax/methods/gsc.py
  # FIRST_RECONSTRUCTION lists the values that give the first one.
  config.gsc = ml_collections.ConfigDict()
  config.gsc.compensation = config_dict.placeholder(bool)  # 5.1; preset: gsc True
  config.gsc.groups = "fiss"          # fiss (nested, FISS) | step | old_new (GLFC) | class
  config.gsc.magnitude = "sigmoid"    # g = 1 - p(y): sigmoid (FISS, GLFC) | softmax (HFC)
  config.gsc.use_exponent = True      # g^zeta with zeta = K_old / K (False: zeta = 1)
  config.gsc.bound = False            # HFC: g <- ln(1 + g), old-class weights in [0.5, 1.2]
  config.gsc.ema_decay = 0.0          # EMA of the group means across iterations (0: per batch)
  config.gsc.relation = config_dict.placeholder(bool)      # 5.2; preset: gsc True
  config.gsc.relation_form = "soft_sharp"  # soft_sharp (RDP) | temperature (two-temperature KD)
  # soft_sharp's soft-label term: softmax (RDP, every pixel) | bce (GLFC/HFC) |
  # softmax_valid (first reconstruction: void and rejected pixels left out)
  config.gsc.soft_label_form = "softmax"
  config.gsc.soft_label_weight = 0.3
  config.gsc.sharpening_weight = 0.1
  config.gsc.class_relation = "off"   # off | fiss (FISS's term) | first (first reconstruction)
  config.gsc.class_relation_weight = 0.5
  config.gsc.temperature_kd_weight = 10.0  # temperature form only
  config.gsc.soft_temperature = 2.0
  config.gsc.sharp_temperature = 0.5
  config.gsc.prototypes = config_dict.placeholder(bool)    # 5.3; preset: gsc True
  # teacher (the teacher on this step's images, before it: RDP) | previous_model (the
  # previous step's final model on its own images, after that step: first reconstruction)
  config.gsc.prototype_source = "teacher"
  config.gsc.similarity = "euclidean"  # euclidean (plain distance, RDP) | cosine | squared_euclidean
  config.gsc.tau = 1.0                # temperature of the softmax over prototype similarities
  # filter_then_relabel (entropy filter, then argmax of the corrected score) | rdp (every
  # background pixel relabelled, nu = 1) | first (both rules must accept; theta)
  config.gsc.relabel = "filter_then_relabel"
  config.gsc.theta = 0.5              # relabel=first: minimum corrected score of an old class
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

"""ImageNet-pretrained ResNet backbones converted from PyTorch checkpoints.

Two checkpoint families map onto ``resnet.make_resnet(backbone)`` (the bare ResNet; in
DeepLabV3 its variables sit under ``params["backbone"]`` and ``batch_stats["backbone"]``):

  iabn         the in-place-ABN ResNet of MiB and PLOP (``resnet101_iabn_sync.pth.tar``):
               ``mod1.conv1`` / ``mod1.bn1`` (stem), ``mod{2..5}.block{1..N}.convs.{conv1,bn1,
               conv2,bn2,conv3,bn3}``, ``mod{k}.block1.proj_conv`` / ``proj_bn`` (shortcut);
               ``classifier.fc`` is dropped. Trained with leaky ReLU 0.01.
  torchvision  ``conv1`` / ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,...,bn3}``,
               ``layer{k}.0.downsample.0`` (conv) / ``downsample.1`` (BN); ``fc`` is dropped.
               Trained with ReLU: run it with ``activation="relu"``.

mod{s+1}.block{b+1} and layer{s}.{b} are our ``stage{s}_block{b}``. Per layer:

  convolution  kernel[kh, kw, in, out] = weight[out, in, kh, kw]
  BatchNorm    scale = |weight| + 1e-5 (iabn) or weight (torchvision); bias = bias;
               mean = running_mean; var = running_var

In-place ABN keeps the affine weight invertible (its backward pass recovers the input from
the output) by using |weight| + eps as the scale, so the folded value is what the network
computed with. PyTorch's running_var (an average of unbiased batch variances) is what its
inference uses, so it is copied as-is. Every checkpoint tensor except the classifier and
``num_batches_tracked`` must be used and every model variable filled with the right shape;
anything else is an error, since a half-loaded backbone trains silently but badly.

The command line is gsc_jax/tools/convert_backbone.py (PyTorch needed only there, to read
the .pth file):

  python -m gsc_jax.tools.convert_backbone --format=iabn \\
      --input=resnet101_iabn_sync.pth.tar --backbone=resnet101 \\
      --output=pretrained/resnet101_iabn.npz

The output .npz holds "params/..." and "batch_stats/..." arrays and a JSON metadata entry
(source format, backbone, the activation the weights expect, source file name).
"""

import dataclasses
import functools
import json
import os
import pickle
import re
from typing import Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax.models import resnet
from gsc_jax import errors

IABN_EPSILON = 1e-5  # in-place ABN's eps, added to |weight|
TORCH_EXTENSIONS = (".pth", ".pth.tar", ".pt")
METADATA_KEY = "__metadata__"
MAX_LISTED = 10  # problems listed per kind in a conversion error

# Our leaf name -> the PyTorch parameter/buffer name inside the same layer.
TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
                    "mean": "running_mean", "var": "running_var"}


# --- reading PyTorch checkpoints -----------------------------------------------------------

def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """The state dict in ``path`` as numpy arrays: floats as float32, integers unchanged.

  ``.pth`` / ``.pth.tar`` / ``.pt``: read with ``torch.load`` (imported here; PyTorch is not
  a dependency of gsc_jax otherwise). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper
  is unwrapped. ``.npz``: arrays saved under their PyTorch names (how the tests feed
  checkpoints without PyTorch). In both cases a leading "module." (DataParallel) is removed.
  """
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  elif path.endswith(TORCH_EXTENSIONS):
    arrays = _load_torch_state_dict(path)
  else:
    raise errors.InputError(f"cannot read {path}: expected a PyTorch checkpoint "
                     f"({', '.join(TORCH_EXTENSIONS)}) or an .npz of its arrays")
  return {key.removeprefix("module."): _float32_or_int(value)
          for key, value in arrays.items()}


def _load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """``torch.load`` of ``path`` restricted to tensors and containers (``weights_only``),
  falling back to full unpickling only when the file holds other objects."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"reading {path} needs PyTorch: pip install torch (needed only to "
                      "convert .pth checkpoints, not to train)") from error
  if not os.path.exists(path):
    raise errors.MissingFileError(f"no checkpoint at {path}")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    logging.warning("torch.load(%s, weights_only=True) failed (%s); loading it with "
                    "weights_only=False, which runs code stored in the file: use this "
                    "only for checkpoints you trust", path, error)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)

  state_dict = checkpoint
  if isinstance(checkpoint, dict):
    for wrapper in ("state_dict", "model"):
      if wrapper in checkpoint:
        state_dict = checkpoint[wrapper]
        break
  if not isinstance(state_dict, dict):
    raise errors.InputError(f"{path} holds a {type(state_dict).__name__}, not a state dict; save "
                     "model.state_dict() (optionally as {'state_dict': ...}) instead")
  arrays = {}
  for key, value in state_dict.items():
    if not isinstance(value, torch.Tensor):
      raise errors.InputError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a "
                       "tensor; is this a training checkpoint without a 'state_dict' entry?")
    value = value.detach().cpu()
    arrays[key] = (value.float() if value.is_floating_point() else value).numpy()
  return arrays


def _float32_or_int(value: np.ndarray) -> np.ndarray:
  """Floating arrays as float32 (the model's dtype); integer ones unchanged."""
  return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


# --- the two checkpoint layouts ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckpointFormat:
  """How one family of PyTorch ResNet checkpoints names and parametrises its layers."""
  name: str
  activation: str  # the activation the weights were trained with (resnet.ACTIVATIONS)
  stem: dict[str, str]  # our stem module -> PyTorch module
  block_prefix: Callable[[int, int], str]  # (our stage 1..4, our block 0..) -> PyTorch prefix
  block_layers: dict[str, str]  # our layer inside a block -> PyTorch module (after prefix)
  dropped_prefixes: tuple[str, ...]  # the ImageNet classifier, not part of the backbone
  batch_norm_scale: Callable[[np.ndarray], np.ndarray]  # PyTorch weight -> our scale

  def torch_module(self, module_path: str) -> str:
    """PyTorch module name of our module ``stem_conv`` or ``stage{s}_block{b}/{layer}``."""
    if module_path in self.stem:
      return self.stem[module_path]
    block, layer = module_path.split("/")
    stage, index = map(int, re.fullmatch(r"stage(\d+)_block(\d+)", block).groups())
    return self.block_prefix(stage, index) + self.block_layers[layer]

  def is_dropped(self, key: str) -> bool:
    """Whether a checkpoint key is deliberately not converted."""
    return key.startswith(self.dropped_prefixes) or key.endswith(".num_batches_tracked")


def iabn_scale(weight: np.ndarray) -> np.ndarray:
  """In-place ABN's effective BN scale |weight| + eps (keeps the affine map invertible)."""
  return np.abs(weight) + IABN_EPSILON


IABN = CheckpointFormat(
    name="iabn", activation="leaky_relu",
    stem={"stem_conv": "mod1.conv1", "stem_bn": "mod1.bn1"},
    block_prefix=lambda stage, block: f"mod{stage + 1}.block{block + 1}.",
    block_layers={**{layer: f"convs.{layer}" for layer in
                     ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")},
                  "downsample_conv": "proj_conv", "downsample_bn": "proj_bn"},
    dropped_prefixes=("classifier.",), batch_norm_scale=iabn_scale)

TORCHVISION = CheckpointFormat(
    name="torchvision", activation="relu",
    stem={"stem_conv": "conv1", "stem_bn": "bn1"},
    block_prefix=lambda stage, block: f"layer{stage}.{block}.",
    block_layers={**{layer: layer for layer in
                     ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")},
                  "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"},
    dropped_prefixes=("fc.",), batch_norm_scale=lambda weight: weight)

FORMATS = {checkpoint_format.name: checkpoint_format for checkpoint_format in (IABN, TORCHVISION)}


# --- conversion ----------------------------------------------------------------------------

def expected_variable_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
  """Shapes of the variables of ``resnet.make_resnet(backbone)`` by flattened path
  ("params/stem_conv/kernel", ...), traced with ``jax.eval_shape`` (nothing is allocated)."""
  model = resnet.make_resnet(backbone)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), images)
  return {path: leaf.shape
          for path, leaf in flax.traverse_util.flatten_dict(variables, sep="/").items()}


def convert_iabn_resnet(state_dict: dict[str, np.ndarray], backbone: str) -> dict:
  """``{"params", "batch_stats"}`` of ``make_resnet(backbone)`` from an in-place-ABN state
  dict (MiB/PLOP's ``resnet101_iabn_sync``); BN scale = |weight| + 1e-5."""
  return convert_state_dict(state_dict, backbone, IABN)


def convert_torchvision_resnet(state_dict: dict[str, np.ndarray], backbone: str) -> dict:
  """``{"params", "batch_stats"}`` of ``make_resnet(backbone)`` from a torchvision ResNet
  state dict; BN scale = weight. The weights expect ``activation="relu"``."""
  return convert_state_dict(state_dict, backbone, TORCHVISION)


def convert_state_dict(state_dict: dict[str, np.ndarray], backbone: str,
                       checkpoint_format: CheckpointFormat) -> dict:
  """Fills every variable of ``make_resnet(backbone)`` from ``state_dict`` (see the module
  docstring for the mapping). ValueError if a variable has no tensor or one of another
  shape, or if a checkpoint tensor (classifier and num_batches_tracked aside) is unused."""
  converted, missing, mismatched, used = {}, [], [], set()
  for path, shape in expected_variable_shapes(backbone).items():
    _, *module_path, leaf = path.split("/")
    key = f"{checkpoint_format.torch_module('/'.join(module_path))}.{TORCH_LEAF_NAMES[leaf]}"
    if key not in state_dict:
      missing.append(f"{path} (checkpoint key {key})")
      continue
    used.add(key)
    value = np.asarray(state_dict[key], np.float32)
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if leaf == "kernel" else shape
    if value.shape != torch_shape:
      mismatched.append(f"{key} has shape {list(value.shape)}, {path} needs "
                        f"{list(torch_shape)} in PyTorch layout")
      continue
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
    elif leaf == "scale":
      value = checkpoint_format.batch_norm_scale(value)
    converted[path] = value
  unused = sorted(key for key in state_dict
                  if key not in used and not checkpoint_format.is_dropped(key))

  if missing or mismatched or unused:
    spec = resnet.backbone_spec(backbone)
    problems = [_listing("model variables without a checkpoint tensor", missing),
                _listing("shape mismatches", mismatched),
                _listing("checkpoint tensors not used", unused)]
    raise errors.InputError(
        f"the checkpoint does not match the {checkpoint_format.name} layout of backbone "
        f"{backbone!r} (blocks per stage {spec.blocks_per_stage}, base width "
        f"{spec.base_width}):\n" + "".join(problem for problem in problems if problem)
        + f"Check the backbone (valid: {sorted(resnet.BACKBONES)}) and the format "
        f"(valid: {sorted(FORMATS)}).")
  return flax.traverse_util.unflatten_dict(converted, sep="/")


def _listing(title: str, items: list[str]) -> str:
  """An indented "N title:" block with the first MAX_LISTED items; "" for no items."""
  if not items:
    return ""
  shown = "".join(f"    {item}\n" for item in items[:MAX_LISTED])
  more = f"    ... and {len(items) - MAX_LISTED} more\n" if len(items) > MAX_LISTED else ""
  return f"  {len(items)} {title}:\n{shown}{more}"


# --- converted files -----------------------------------------------------------------------

def save_backbone(path: str, variables: dict, metadata: dict) -> None:
  """Writes ``variables`` as "params/..." / "batch_stats/..." arrays of an .npz at ``path``,
  with ``metadata`` (JSON-serialisable) stored as a JSON string under "__metadata__"."""
  flat = flax.traverse_util.flatten_dict(variables, sep="/")
  arrays = {key: np.asarray(value) for key, value in flat.items()}
  arrays[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as file:  # a file object: np.savez appends no ".npz" to the name
    np.savez(file, **arrays)


def load_backbone(path: str) -> tuple[dict, dict]:
  """``(variables, metadata)`` from a file written by ``save_backbone``."""
  with np.load(path, allow_pickle=False) as archive:
    if METADATA_KEY not in archive.files:
      raise errors.InputError(f"{path} has no {METADATA_KEY} entry: it was not written by "
                       "save_backbone; convert the checkpoint with "
                       "python -m gsc_jax.tools.convert_backbone")
    metadata = json.loads(str(archive[METADATA_KEY]))
    flat = {key: archive[key] for key in archive.files if key != METADATA_KEY}
  return flax.traverse_util.unflatten_dict(flat, sep="/"), metadata


def convert_checkpoint(input_path: str, source_format: str, backbone: str
                       ) -> tuple[dict, dict]:
  """``(variables, metadata)`` of the checkpoint at ``input_path`` in ``source_format``
  ("iabn" or "torchvision") for ``make_resnet(backbone)``, ready for ``save_backbone``."""
  if source_format not in FORMATS:
    raise errors.InputError(f"unknown checkpoint format {source_format!r}; valid: {sorted(FORMATS)}")
  checkpoint_format = FORMATS[source_format]
  variables = convert_state_dict(read_torch_checkpoint(input_path), backbone,
                                 checkpoint_format)
  metadata = {"source_format": source_format, "backbone": backbone,
              "activation": checkpoint_format.activation,
              "source_file": os.path.basename(input_path)}
  return variables, metadata


def pretrained_backbone_variables(path: str, backbone: str, activation: str) -> dict:
  """The ``{"params", "batch_stats"}`` of the backbone converted into ``path``, for a model
  with ``model.backbone=backbone`` and ``model.activation=activation``. ValueError when the
  file holds another backbone or weights trained with another activation."""
  variables, metadata = load_backbone(path)
  if metadata["backbone"] != backbone:
    raise errors.InputError(f"{path} holds a {metadata['backbone']} backbone but "
                     f"model.backbone={backbone}; set model.backbone={metadata['backbone']} "
                     "or convert a checkpoint of the configured backbone")
  if metadata["activation"] != activation:
    raise errors.InputError(f"{path} holds {metadata['source_format']} weights trained with "
                     f"{metadata['activation']} but model.activation={activation}; set "
                     f"model.activation={metadata['activation']}")
  return variables


# --- whole MiB / PLOP segmentation models ---------------------------------------------------

HEAD_CONVOLUTIONS = ("global_pooling_conv", "red_conv", "pool_red_conv")
HEAD_BATCH_NORMS = ("map_bn", "global_pooling_bn", "red_bn")
NUM_PYRAMID_CONVOLUTIONS = 4  # map_convs.0 (1x1) and .1-.3 (dilated 3x3)
SEGMENTATION_BATCH_NORM_SCALES = {"iabn": IABN.batch_norm_scale,
                                  "batchnorm": TORCHVISION.batch_norm_scale}


def convert_segmentation_module(state_dict: dict[str, np.ndarray], backbone: str,
                                batch_norm: str = "iabn") -> dict:
  """``{"params", "batch_stats"}`` of ``deeplab.DeepLabV3`` from the state dict of MiB's /
  PLOP's ``IncrementalSegmentationModule`` (a whole trained model, not only a backbone).

  ``body.*`` is their ResNet (the iabn layout above), ``head.map_convs.<i>`` our
  ``head/map_conv<i>``, ``head.<name>`` our ``head/<name>`` for the other convolutions and
  BatchNorms, ``cls.<i>`` our ``classifier_<i>`` (kernel and bias). A leading ``module.``
  (their DistributedDataParallel wrapper) is removed. ``batch_norm`` says how their
  BatchNorm weight becomes our scale: "iabn" (in-place ABN, |weight| + 1e-5) or
  "batchnorm" (a plain BatchNorm2d, the weight itself). Every tensor but
  ``num_batches_tracked`` must be used; anything else is an error.
  """
  if batch_norm not in SEGMENTATION_BATCH_NORM_SCALES:
    raise errors.InputError(f"unknown batch_norm {batch_norm!r}; valid: "
                            f"{sorted(SEGMENTATION_BATCH_NORM_SCALES)}")
  scale = SEGMENTATION_BATCH_NORM_SCALES[batch_norm]
  state_dict = {key.removeprefix("module."): np.asarray(value)
                for key, value in state_dict.items()}
  body = convert_state_dict({key.removeprefix("body."): value for key, value in state_dict.items()
                             if key.startswith("body.")}, backbone,
                            dataclasses.replace(IABN, batch_norm_scale=scale))
  used = {key for key in state_dict if key.startswith("body.")}

  def take(key: str) -> np.ndarray:
    if key not in state_dict:
      raise errors.InputError(f"the segmentation model state dict has no {key!r}; it is not "
                              "a MiB/PLOP IncrementalSegmentationModule")
    used.add(key)
    return np.asarray(state_dict[key], np.float32)

  def kernel(key: str) -> np.ndarray:
    return take(key).transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]

  head_params = {f"map_conv{index}": {"kernel": kernel(f"head.map_convs.{index}.weight")}
                 for index in range(NUM_PYRAMID_CONVOLUTIONS)}
  head_params.update({name: {"kernel": kernel(f"head.{name}.weight")}
                      for name in HEAD_CONVOLUTIONS})
  head_stats = {}
  for name in HEAD_BATCH_NORMS:
    head_params[name] = {"scale": scale(take(f"head.{name}.weight")),
                         "bias": take(f"head.{name}.bias")}
    head_stats[name] = {"mean": take(f"head.{name}.running_mean"),
                        "var": take(f"head.{name}.running_var")}
  params = {"backbone": body["params"], "head": head_params}
  index = 0
  while f"cls.{index}.weight" in state_dict:
    params[f"classifier_{index}"] = {"kernel": kernel(f"cls.{index}.weight"),
                                     "bias": take(f"cls.{index}.bias")}
    index += 1
  unused = sorted(key for key in state_dict
                  if key not in used and not key.endswith(".num_batches_tracked"))
  if unused or index == 0:
    raise errors.InputError("the segmentation model state dict does not match DeepLabV3: "
                            + (f"{len(unused)} tensors not used ({', '.join(unused[:MAX_LISTED])})"
                               if unused else "no classifier cls.0"))
  return {"params": params, "batch_stats": {"backbone": body["batch_stats"], "head": head_stats}}

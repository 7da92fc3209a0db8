"""PyTorch ResNet checkpoints converted by convert.py reproduce PyTorch's own outputs.

The fixtures were made once with PyTorch by tests/fixtures/make_pretrained_fixtures.py (see
its docstring): the state dicts of a small random in-place-ABN ResNet and of a
torchvision-style one, and their float64 outputs on two images. No PyTorch is needed here.
"""

import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import errors
from gsc_jax.models import convert
from gsc_jax.models import deeplab
from gsc_jax.models import resnet

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURE_BACKBONE = "resnet_fixture"  # the topology of make_pretrained_fixtures.py
IABN_FILE = os.path.join(FIXTURES, "pretrained_iabn_fixture.npz")
TORCHVISION_FILE = os.path.join(FIXTURES, "pretrained_torchvision_fixture.npz")

FORMATS = [  # (format name, converter, activation the weights expect, fixture file)
    ("iabn", convert.convert_iabn_resnet, "leaky_relu", IABN_FILE),
    ("torchvision", convert.convert_torchvision_resnet, "relu", TORCHVISION_FILE),
]


@pytest.fixture(autouse=True)
def fixture_backbone(monkeypatch):
  """Registers the fixture's topology for the duration of each test."""
  monkeypatch.setitem(resnet.BACKBONES, FIXTURE_BACKBONE,
                      resnet.BackboneSpec(blocks_per_stage=(2, 1, 1, 2), base_width=8))


@pytest.fixture(scope="module")
def references():
  with np.load(os.path.join(FIXTURES, "pretrained_reference_activations.npz")) as archive:
    return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def iabn_state_dict():
  return convert.read_torch_checkpoint(IABN_FILE)


def shapes_by_path(tree):
  return {path: np.shape(leaf)
          for path, leaf in flax.traverse_util.flatten_dict(tree, sep="/").items()}


# --- numerical equivalence -------------------------------------------------------------------

@pytest.mark.parametrize("name, converter, activation, path", FORMATS)
def test_converted_backbone_reproduces_pytorch_outputs(name, converter, activation, path,
                                                       references):
  variables = converter(convert.read_torch_checkpoint(path), FIXTURE_BACKBONE)
  model = resnet.make_resnet(FIXTURE_BACKBONE, 16, activation=activation)
  images = jnp.asarray(references["images"])
  initialised = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert shapes_by_path(variables) == shapes_by_path(initialised)

  features, stages = model.apply(variables, images, train=False)
  outputs = {f"{name}_features": features,
             **{f"{name}_stage{index}": stage for index, stage in enumerate(stages, start=1)}}
  for key, actual in outputs.items():
    expected = references[key]
    # float32 against a float64 reference: errors accumulate relative to the map's scale.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                               err_msg=key)


def test_iabn_fixture_exercises_negative_weights_and_dropped_classifier(iabn_state_dict):
  bn_weights = np.concatenate([value for key, value in iabn_state_dict.items()
                               if "bn" in key and key.endswith(".weight")])
  assert bn_weights.min() < -0.5  # so |weight| changes the result
  assert "classifier.fc.weight" in iabn_state_dict

  variables = convert.convert_iabn_resnet(iabn_state_dict, FIXTURE_BACKBONE)
  scale = variables["params"]["stage1_block0"]["bn2"]["scale"]
  np.testing.assert_allclose(
      scale, np.abs(iabn_state_dict["mod2.block1.convs.bn2.weight"]) + 1e-5, rtol=1e-6)
  np.testing.assert_array_equal(
      variables["params"]["stem_conv"]["kernel"],
      iabn_state_dict["mod1.conv1.weight"].transpose(2, 3, 1, 0))


# --- reading ---------------------------------------------------------------------------------

def test_read_npz_strips_module_prefix_and_gives_float32():
  with np.load(IABN_FILE) as archive:
    assert all(key.startswith("module.") for key in archive.files)
  state_dict = convert.read_torch_checkpoint(IABN_FILE)
  assert not any(key.startswith("module.") for key in state_dict)
  assert "mod1.conv1.weight" in state_dict
  assert all(value.dtype == np.float32 for value in state_dict.values())


def test_read_torch_file_without_torch_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError, match="pip install torch"):
    convert.read_torch_checkpoint(str(tmp_path / "resnet101_iabn_sync.pth.tar"))


def test_read_rejects_unknown_extension():
  with pytest.raises(ValueError, match=r"\.pth"):
    convert.read_torch_checkpoint("weights.h5")


# --- conversion errors -----------------------------------------------------------------------

def test_unused_checkpoint_tensor_is_an_error(iabn_state_dict):
  state_dict = {**iabn_state_dict, "mod2.block1.convs.conv4.weight": np.zeros((1, 1, 1, 1))}
  with pytest.raises(ValueError, match=r"(?s)iabn layout of backbone 'resnet_fixture'.*"
                                       r"1 checkpoint tensors not used:\s+mod2\.block1\."
                                       r"convs\.conv4"):
    convert.convert_iabn_resnet(state_dict, FIXTURE_BACKBONE)


def test_missing_checkpoint_tensor_is_an_error(iabn_state_dict):
  state_dict = dict(iabn_state_dict)
  del state_dict["mod3.block1.proj_bn.running_var"]
  with pytest.raises(ValueError, match=r"(?s)1 model variables without a checkpoint tensor.*"
                                       r"batch_stats/stage2_block0/downsample_bn/var"):
    convert.convert_iabn_resnet(state_dict, FIXTURE_BACKBONE)


def test_wrong_shape_is_an_error(iabn_state_dict):
  state_dict = {**iabn_state_dict, "mod1.conv1.weight": np.zeros((8, 3, 5, 5), np.float32)}
  with pytest.raises(ValueError, match=r"mod1\.conv1\.weight has shape \[8, 3, 5, 5\], "
                                       r"params/stem_conv/kernel needs \[8, 3, 7, 7\]"):
    convert.convert_iabn_resnet(state_dict, FIXTURE_BACKBONE)


def test_wrong_backbone_or_format_lists_first_problems(iabn_state_dict):
  with pytest.raises(ValueError, match=r"(?s)torchvision layout.*\.\.\. and \d+ more"):
    convert.convert_torchvision_resnet(iabn_state_dict, FIXTURE_BACKBONE)
  with pytest.raises(ValueError, match="iabn layout of backbone 'resnet_tiny'"):
    convert.convert_iabn_resnet(iabn_state_dict, "resnet_tiny")


# --- converted files -------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path):
  variables, metadata = convert.convert_checkpoint(IABN_FILE, "iabn", FIXTURE_BACKBONE)
  assert metadata == {"source_format": "iabn", "backbone": FIXTURE_BACKBONE,
                      "activation": "leaky_relu",
                      "source_file": "pretrained_iabn_fixture.npz"}
  path = str(tmp_path / "pretrained" / "fixture_iabn")  # no .npz suffix is added
  convert.save_backbone(path, variables, metadata)
  loaded, loaded_metadata = convert.load_backbone(path)
  assert loaded_metadata == metadata
  expected = flax.traverse_util.flatten_dict(variables, sep="/")
  actual = flax.traverse_util.flatten_dict(loaded, sep="/")
  assert actual.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value)


def test_pretrained_backbone_variables_checks_backbone_and_activation(tmp_path):
  variables, metadata = convert.convert_checkpoint(TORCHVISION_FILE, "torchvision",
                                                   FIXTURE_BACKBONE)
  path = str(tmp_path / "fixture_torchvision.npz")
  convert.save_backbone(path, variables, metadata)

  loaded = convert.pretrained_backbone_variables(path, FIXTURE_BACKBONE, "relu")
  assert shapes_by_path(loaded) == shapes_by_path(variables)
  with pytest.raises(ValueError, match="set model.backbone=resnet_fixture"):
    convert.pretrained_backbone_variables(path, "resnet101", "relu")
  with pytest.raises(ValueError, match="set model.activation=relu"):
    convert.pretrained_backbone_variables(path, FIXTURE_BACKBONE, "leaky_relu")


# The command with the fixture topology registered first (the command line cannot add it).
COMMAND_SCRIPT = """
import runpy
import sys
from gsc_jax.models import resnet

resnet.BACKBONES["resnet_fixture"] = resnet.BackboneSpec(blocks_per_stage=(2, 1, 1, 2),
                                                         base_width=8)
sys.argv = ["convert_backbone"] + sys.argv[1:]
runpy.run_module("gsc_jax.tools.convert_backbone", run_name="__main__")
"""


def test_command_line_writes_a_loadable_backbone(tmp_path):
  output = str(tmp_path / "fixture_torchvision.npz")
  result = subprocess.run(
      [sys.executable, "-c", COMMAND_SCRIPT, "--format=torchvision",
       f"--input={TORCHVISION_FILE}", f"--backbone={FIXTURE_BACKBONE}", f"--output={output}"],
      cwd=os.path.dirname(os.path.dirname(FIXTURES)), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"use it with: --config.model.pretrained={output} --config.model.activation=relu" \
      in result.stdout
  variables = convert.pretrained_backbone_variables(output, FIXTURE_BACKBONE, "relu")
  expected, _ = convert.convert_checkpoint(TORCHVISION_FILE, "torchvision", FIXTURE_BACKBONE)
  assert shapes_by_path(variables) == shapes_by_path(expected)


def test_load_rejects_file_without_metadata(tmp_path):
  path = str(tmp_path / "plain.npz")
  np.savez(path, x=np.zeros(2))
  with pytest.raises(ValueError, match="gsc_jax.tools.convert_backbone"):
    convert.load_backbone(path)


# --- activation choice in the model ----------------------------------------------------------

def test_relu_backbone_has_no_negative_features():
  model = resnet.make_resnet("resnet_tiny", activation="relu")
  images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  features, stages = model.apply(variables, images, train=False)
  assert np.asarray(stages[-1]).min() < 0
  np.testing.assert_array_equal(features, np.maximum(stages[-1], 0))


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match=r"'gelu'.*\['leaky_relu', 'relu'\]"):
    resnet.make_resnet("resnet_tiny", activation="gelu")
  model = deeplab.DeepLabV3(classes_per_step=(2,), backbone="resnet_tiny", activation="gelu")
  with pytest.raises(ValueError, match=r"'gelu'.*\['leaky_relu', 'relu'\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def released_state_dict(variables, batch_norm_weight):
  """The PyTorch state dict MiB's / PLOP's IncrementalSegmentationModule would hold for
  ``variables`` (written out independently of convert.py's mapping)."""
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  stage_layer = {"downsample_conv": "proj_conv", "downsample_bn": "proj_bn"}
  state = {}

  def torch_name(path):
    parts = path.split("/")
    if parts[0] == "backbone":
      if parts[1] in ("stem_conv", "stem_bn"):
        return "body.mod1." + {"stem_conv": "conv1", "stem_bn": "bn1"}[parts[1]]
      stage, block = (int(n) for n in parts[1].replace("stage", "").split("_block"))
      layer = stage_layer.get(parts[2], "convs." + parts[2])
      return f"body.mod{stage + 1}.block{block + 1}.{layer}"
    if parts[0] == "head":
      if parts[1].startswith("map_conv"):
        return f"head.map_convs.{parts[1][len('map_conv'):]}"
      return f"head.{parts[1]}"
    return f"module.cls.{parts[0].split('_')[1]}"  # the wrapper prefix must be removed

  for path, value in params.items():
    module, leaf = torch_name(path.rsplit("/", 1)[0]), path.rsplit("/", 1)[1]
    value = np.asarray(value)
    if leaf == "kernel":
      state[f"{module}.weight"] = value.transpose(3, 2, 0, 1)
    elif leaf == "scale":
      state[f"{module}.weight"] = batch_norm_weight(value)
    else:
      state[f"{module}.bias"] = value
  for path, value in stats.items():
    module, leaf = torch_name(path.rsplit("/", 1)[0]), path.rsplit("/", 1)[1]
    state[f"{module}.running_{leaf}"] = np.asarray(value)
    state[f"{module}.num_batches_tracked"] = np.array(7)
  return state


@pytest.mark.parametrize("batch_norm, to_weight", [
    ("batchnorm", lambda scale: scale),
    ("iabn", lambda scale: scale - convert.IABN_EPSILON)])  # scales are positive here
def test_whole_released_segmentation_model_converts_to_deeplab_variables(batch_norm, to_weight):
  model = deeplab.DeepLabV3(classes_per_step=(16, 5), backbone="resnet_tiny", head_channels=8)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  # Distinct values everywhere (BN scales positive, as in-place ABN's |w| + eps is).
  leaves, treedef = jax.tree.flatten(variables)
  rng = np.random.default_rng(0)
  leaves = [np.abs(rng.standard_normal(leaf.shape)).astype(np.float32) + 0.1 for leaf in leaves]
  variables = jax.tree.unflatten(treedef, leaves)
  state = released_state_dict(variables, to_weight)
  converted = convert.convert_segmentation_module(state, "resnet_tiny", batch_norm=batch_norm)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),  # float32 +- eps
               converted, jax.tree.map(np.asarray, variables))
  with pytest.raises(errors.InputError, match="not used"):
    convert.convert_segmentation_module({**state, "head.extra.weight": np.zeros(3)},
                                        "resnet_tiny", batch_norm=batch_norm)

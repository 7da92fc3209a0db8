"""DeepLabV3 structure, BatchNorm modes, per-step classifiers and model growth.

Everything runs on the tiny backbone with 64x64 inputs; the ResNet-50/101 checks only trace
shapes (jax.eval_shape), so no large model is ever materialised.
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax.models import deeplab
from gsc_jax.models import incremental
from gsc_jax.models import resnet

HEAD = 16  # head_channels of the test models
OLD_STEPS = (3, 2)  # background + 2 classes, then 2 classes
NEW_STEPS = (3, 2, 1)


def tiny_model(classes_per_step, output_stride=16):
  return deeplab.DeepLabV3(classes_per_step=classes_per_step, backbone="resnet_tiny",
                           output_stride=output_stride, head_channels=HEAD)


def leaves_by_path(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def abstract_forward(model, images_shape):
  """Shapes of (variables, outputs) of ``model`` in inference mode, without computing."""
  def init_and_apply():
    images = jnp.zeros(images_shape, jnp.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    return variables, model.apply(variables, images, train=False)
  return jax.eval_shape(init_and_apply)


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(42), (2, 64, 64, 3), jnp.float32)


@pytest.fixture(scope="module")
def initial_variables(images):
  """Freshly initialised variables of the step-1 model (classes 3+2)."""
  model = tiny_model(OLD_STEPS)
  return jax.jit(lambda rng: model.init(rng, images, train=False))(jax.random.key(0))


@pytest.fixture(scope="module")
def old_variables(initial_variables, images):
  """The step-1 model after one training-mode pass, so that its running statistics differ
  from the initial ones and inference mode really uses them."""
  _, updates = tiny_model(OLD_STEPS).apply(initial_variables, images, train=True,
                                           mutable=["batch_stats"])
  return {"params": initial_variables["params"], "batch_stats": updates["batch_stats"]}


def grow(old_variables, init):
  new_model = tiny_model(NEW_STEPS)
  return jax.jit(lambda old, rng: incremental.grow_variables(
      new_model, old, rng, step=2, init=init))(old_variables, jax.random.key(7))


# --- shapes ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_output_shapes_output_stride_16(old_variables, images):
  outputs = tiny_model(OLD_STEPS).apply(old_variables, images, train=False)
  assert outputs["logits"].shape == (2, 64, 64, 5)
  assert outputs["logits_low"].shape == (2, 4, 4, 5)
  assert outputs["head"].shape == (2, 4, 4, HEAD)
  assert [s.shape for s in outputs["stages"]] == [
      (2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256), (2, 4, 4, 512)]


def test_output_shapes_output_stride_8():
  _, outputs = abstract_forward(tiny_model(NEW_STEPS, output_stride=8), (2, 64, 64, 3))
  assert outputs["logits"].shape == (2, 64, 64, 6)
  assert outputs["logits_low"].shape == (2, 8, 8, 6)
  assert outputs["head"].shape == (2, 8, 8, HEAD)
  assert [s.shape for s in outputs["stages"]] == [
      (2, 16, 16, 64), (2, 8, 8, 128), (2, 8, 8, 256), (2, 8, 8, 512)]


def test_feature_size_is_ceil_of_input_over_stride_for_odd_sizes():
  _, outputs = abstract_forward(tiny_model(NEW_STEPS), (1, 72, 100, 3))
  assert outputs["logits_low"].shape == (1, 5, 7, 6)  # ceil(72/16), ceil(100/16)
  assert outputs["logits"].shape == (1, 72, 100, 6)


def test_logits_are_bilinear_upsampling_of_low_resolution_logits(old_variables, images):
  outputs = tiny_model(OLD_STEPS).apply(old_variables, images, train=False)
  low = np.asarray(outputs["logits_low"])
  # Half-pixel centres, 16x upsampling: output pixel 8 sits at input coordinate 8.5/16 - 0.5
  # = 0.03125, i.e. 1/32 of the way from low pixel 0 to low pixel 1 (on both axes).
  t = 1.0 / 32
  expected = ((1 - t) * (1 - t) * low[:, 0, 0] + (1 - t) * t * low[:, 0, 1]
              + t * (1 - t) * low[:, 1, 0] + t * t * low[:, 1, 1])
  np.testing.assert_allclose(outputs["logits"][:, 8, 8], expected, rtol=1e-5, atol=1e-5)
  # Border pixels clamp to the nearest low-resolution value.
  np.testing.assert_allclose(outputs["logits"][:, 0, 0], low[:, 0, 0], rtol=1e-5, atol=1e-6)


# --- backbone --------------------------------------------------------------------------------

def test_stages_are_pre_activation_and_features_their_activation(old_variables, images):
  model_outputs = tiny_model(OLD_STEPS).apply(old_variables, images, train=False)
  backbone = resnet.make_resnet("resnet_tiny")
  features, stages = backbone.apply(
      {"params": old_variables["params"]["backbone"],
       "batch_stats": old_variables["batch_stats"]["backbone"]}, images, train=False)
  for from_model, direct in zip(model_outputs["stages"], stages):
    np.testing.assert_array_equal(from_model, direct)
  last = np.asarray(stages[-1])
  assert last.min() < -0.1  # not activated: leaky ReLU would have shrunk negatives 100x
  np.testing.assert_allclose(features, np.where(last > 0, last, 0.01 * last), rtol=1e-6)


@pytest.mark.parametrize("dilation", [1, 2])
def test_bottleneck_dilation_sets_the_receptive_field(dilation):
  """With one 3x3 conv of dilation d between two 1x1 convs, an input pixel reaches exactly
  the output pixels at offsets in {-d, 0, d}^2 (padding d keeps the size)."""
  block = resnet.Bottleneck(width=4, dilation=dilation)
  base = jax.random.normal(jax.random.key(0), (1, 9, 9, 16))
  variables = block.init(jax.random.key(1), base, train=False)
  poked = base.at[0, 4, 4, :].add(5.0)
  changed = np.abs(np.asarray(block.apply(variables, poked, train=False)
                              - block.apply(variables, base, train=False))).max(-1)[0] > 1e-6
  expected = np.zeros((9, 9), bool)
  for di in (-dilation, 0, dilation):
    for dj in (-dilation, 0, dilation):
      expected[4 + di, 4 + dj] = True
  np.testing.assert_array_equal(changed, expected)
  assert block.apply(variables, base, train=False).shape == base.shape  # identity shortcut
  assert "downsample_conv" not in variables["params"]


def conv3x3_settings(module, images_shape, **kwargs):
  """(stride, dilation, padding) of every 3x3 convolution, in execution order, read from
  the traced program of ``module`` in inference mode."""
  images = jnp.zeros(images_shape, jnp.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), images, train=False))
  program = jax.make_jaxpr(lambda v: module.apply(v, images, train=False))(variables)
  return [(eqn.params["window_strides"][0], eqn.params["rhs_dilation"][0],
           eqn.params["padding"][0][0])
          for eqn in program.jaxpr.eqns
          if eqn.primitive.name == "conv_general_dilated"
          and eqn.invars[1].aval.shape[:2] == (3, 3)]


@pytest.mark.parametrize("output_stride, stage3, stage4", [
    (16, [(2, 1, 1), (1, 1, 1)], [(1, 2, 2)] * 3),
    (8, [(1, 2, 2)] * 2, [(1, 4, 4)] * 3),
])
def test_every_block_of_dilated_stages_is_dilated(output_stride, stage3, stage4):
  backbone = resnet.ResNet(blocks_per_stage=(1, 1, 2, 3), base_width=4,
                           output_stride=output_stride)
  expected = [(1, 1, 1), (2, 1, 1)] + stage3 + stage4  # stages 1 and 2: one block each
  assert conv3x3_settings(backbone, (1, 32, 32, 3)) == expected


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 32))])
def test_pyramid_dilation_rates(output_stride, rates):
  settings = conv3x3_settings(tiny_model((2,), output_stride), (1, 32, 32, 3))
  assert settings[-3:] == [(1, rate, rate) for rate in rates]


def test_strided_first_blocks_have_projection_shortcuts(old_variables):
  backbone = old_variables["params"]["backbone"]
  for stage in range(1, 5):
    block = backbone[f"stage{stage}_block0"]
    assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                          "downsample_conv", "downsample_bn"}
  assert backbone["stem_conv"]["kernel"].shape == (7, 7, 3, 16)
  assert backbone["stage4_block0"]["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert all("bias" not in leaf for leaf in leaves_by_path(backbone) if "conv" in leaf)


@pytest.mark.parametrize("name, blocks, expected_parameters", [
    ("resnet50", (3, 4, 6, 3), 23_508_032),
    ("resnet101", (3, 4, 23, 3), 42_500_160),  # torchvision's counts without the fc layer
])
def test_large_backbones_structure_abstractly(name, blocks, expected_parameters):
  model = deeplab.DeepLabV3(classes_per_step=(16, 1), backbone=name)
  variables, outputs = abstract_forward(model, (1, 64, 64, 3))
  backbone = variables["params"]["backbone"]
  for stage, count in enumerate(blocks, start=1):
    assert sum(key.startswith(f"stage{stage}_block") for key in backbone) == count
  assert sum(x.size for x in jax.tree.leaves(backbone)) == expected_parameters
  assert outputs["stages"][-1].shape == (1, 4, 4, 2048)
  assert variables["params"]["head"]["map_conv0"]["kernel"].shape == (1, 1, 2048, 256)
  assert outputs["logits"].shape == (1, 64, 64, 17)


# --- head ------------------------------------------------------------------------------------

def test_head_parameters_pyramid_and_pool_branch(old_variables):
  head = old_variables["params"]["head"]
  assert head["map_conv0"]["kernel"].shape == (1, 1, 512, HEAD)
  for index in (1, 2, 3):
    assert head[f"map_conv{index}"]["kernel"].shape == (3, 3, 512, HEAD)
  assert head["map_bn"]["scale"].shape == (4 * HEAD,)
  assert head["red_conv"]["kernel"].shape == (1, 1, 4 * HEAD, HEAD)
  assert head["global_pooling_conv"]["kernel"].shape == (1, 1, 512, HEAD)
  assert head["global_pooling_bn"]["scale"].shape == (HEAD,)
  assert head["pool_red_conv"]["kernel"].shape == (1, 1, HEAD, HEAD)
  assert head["red_bn"]["scale"].shape == (HEAD,)  # added, not concatenated (5 * HEAD)


def test_image_pool_branch_is_broadcast_and_added(old_variables, images):
  _, state = tiny_model(OLD_STEPS).apply(old_variables, images, train=False,
                                         capture_intermediates=True)
  captured = state["intermediates"]["head"]
  pyramid = captured["red_conv"]["__call__"][0]          # [B, h, w, C]
  pooled = captured["pool_red_conv"]["__call__"][0]      # [B, 1, 1, C]
  normalised = captured["red_bn"]["__call__"][0]
  assert pooled.shape == (2, 1, 1, HEAD)
  assert np.abs(np.asarray(pooled)).max() > 1e-3
  bn_params = old_variables["params"]["head"]["red_bn"]
  bn_stats = old_variables["batch_stats"]["head"]["red_bn"]
  expected = ((pyramid + pooled - bn_stats["mean"]) / np.sqrt(bn_stats["var"] + 1e-5)
              * bn_params["scale"] + bn_params["bias"])
  np.testing.assert_allclose(normalised, expected, rtol=1e-4, atol=1e-4)


# --- BatchNorm modes -------------------------------------------------------------------------

def test_train_mode_updates_batch_stats_with_torch_momentum(initial_variables, images):
  model, variables = tiny_model(OLD_STEPS), initial_variables
  _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  before, after = leaves_by_path(variables["batch_stats"]), leaves_by_path(updates["batch_stats"])
  assert before.keys() == after.keys()
  unchanged = [path for path in before if np.allclose(before[path], after[path])]
  assert not unchanged

  # running = 0.9 * running + 0.1 * batch statistic (PyTorch's momentum 0.1).
  _, state = model.apply(variables, images, train=False, capture_intermediates=True)
  stem = np.asarray(state["intermediates"]["backbone"]["stem_conv"]["__call__"][0])
  np.testing.assert_allclose(after["backbone/stem_bn/mean"], 0.1 * stem.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(after["backbone/stem_bn/var"], 0.9 + 0.1 * stem.var((0, 1, 2)),
                             rtol=1e-4)


def test_inference_mode_keeps_batch_stats_and_is_per_image(old_variables, images):
  model = tiny_model(OLD_STEPS)
  outputs, updates = model.apply(old_variables, images, train=False, mutable=["batch_stats"])
  for path, value in leaves_by_path(updates["batch_stats"]).items():
    np.testing.assert_array_equal(value, leaves_by_path(old_variables["batch_stats"])[path])
  alone = model.apply(old_variables, images[:1], train=False)
  np.testing.assert_allclose(outputs["logits_low"][:1], alone["logits_low"], rtol=1e-4,
                             atol=1e-5)
  trained, _ = model.apply(old_variables, images, train=True, mutable=["batch_stats"])
  assert not np.allclose(trained["logits_low"], outputs["logits_low"], atol=1e-3)


# --- per-step classifiers and growth ---------------------------------------------------------

def test_classifiers_are_concatenated_in_step_order(old_variables, images):
  outputs = tiny_model(OLD_STEPS).apply(old_variables, images, train=False)
  params = old_variables["params"]
  head = np.asarray(outputs["head"])
  start = 0
  for step, count in enumerate(OLD_STEPS):
    classifier = params[f"classifier_{step}"]
    expected = head @ np.asarray(classifier["kernel"])[0, 0] + np.asarray(classifier["bias"])
    np.testing.assert_allclose(outputs["logits_low"][..., start:start + count], expected,
                               rtol=1e-4, atol=1e-5)
    start += count


def test_grown_model_reproduces_old_logits_on_old_channels(old_variables, images):
  grown = grow(old_variables, init="random")
  assert set(grown["params"]) == {"backbone", "head", "classifier_0", "classifier_1",
                                  "classifier_2"}
  old_outputs = tiny_model(OLD_STEPS).apply(old_variables, images, train=False)
  new_outputs = tiny_model(NEW_STEPS).apply(grown, images, train=False)
  assert new_outputs["logits"].shape[-1] == 6
  np.testing.assert_allclose(new_outputs["logits"][..., :5], old_outputs["logits"],
                             rtol=1e-5, atol=1e-5)
  for old_stage, new_stage in zip(old_outputs["stages"], new_outputs["stages"]):
    np.testing.assert_allclose(new_stage, old_stage, rtol=1e-5, atol=1e-5)


def test_grow_with_mib_init_splits_background_probability(old_variables, images):
  grown = grow(old_variables, init="mib")
  old_probs = jax.nn.softmax(tiny_model(OLD_STEPS).apply(old_variables, images,
                                                         train=False)["logits"])
  new_probs = jax.nn.softmax(tiny_model(NEW_STEPS).apply(grown, images, train=False)["logits"])
  # Old classes keep their probability; background and the new class share the old
  # background probability equally (N = 1 new class -> halves).
  np.testing.assert_allclose(new_probs[..., 1:5], old_probs[..., 1:5], atol=1e-5)
  np.testing.assert_allclose(new_probs[..., 0], old_probs[..., 0] / 2, atol=1e-5)
  np.testing.assert_allclose(new_probs[..., 5], old_probs[..., 0] / 2, atol=1e-5)


def test_grow_rejects_unknown_init_and_wrong_step(old_variables):
  new_model = tiny_model(NEW_STEPS)
  with pytest.raises(ValueError, match="init"):
    incremental.grow_variables(new_model, old_variables, jax.random.key(0), 2, init="zero")
  with pytest.raises(ValueError, match="classifier_3"):
    jax.eval_shape(lambda: incremental.grow_variables(
        new_model, old_variables, jax.random.key(0), 3))


def test_mib_init_values_by_hand():
  rng = np.random.default_rng(0)
  params = {
      "head": {"kernel": rng.normal(size=(1, 1, 4, 4)).astype(np.float32)},
      "classifier_0": {"kernel": rng.normal(size=(1, 1, 4, 3)).astype(np.float32),
                       "bias": np.array([0.5, -1.0, 2.0], np.float32)},
      "classifier_1": {"kernel": rng.normal(size=(1, 1, 4, 1)).astype(np.float32),
                       "bias": np.array([0.25], np.float32)},
      "classifier_2": {"kernel": rng.normal(size=(1, 1, 4, 2)).astype(np.float32),
                       "bias": np.array([3.0, -3.0], np.float32)},
  }
  originals = jax.tree.map(np.copy, params)
  result = incremental.init_new_classifier_mib(params, step=2)

  balanced = 0.5 - math.log(3.0)  # b0 - log(N + 1) with N = 2 new channels
  background_kernel = originals["classifier_0"]["kernel"][0, 0, :, 0]
  for channel in range(2):
    np.testing.assert_allclose(result["classifier_2"]["kernel"][0, 0, :, channel],
                               background_kernel, rtol=0, atol=0)
  np.testing.assert_allclose(result["classifier_2"]["bias"], [balanced, balanced], rtol=1e-6)
  np.testing.assert_allclose(result["classifier_0"]["bias"], [balanced, -1.0, 2.0], rtol=1e-6)
  np.testing.assert_array_equal(result["classifier_0"]["kernel"],
                                originals["classifier_0"]["kernel"])
  np.testing.assert_array_equal(result["classifier_1"]["kernel"],
                                originals["classifier_1"]["kernel"])
  np.testing.assert_array_equal(result["classifier_1"]["bias"], [0.25])
  np.testing.assert_array_equal(result["head"]["kernel"], originals["head"]["kernel"])
  # The input is left untouched.
  for path, value in leaves_by_path(originals).items():
    np.testing.assert_array_equal(leaves_by_path(params)[path], value)
  with pytest.raises(ValueError):
    incremental.init_new_classifier_mib(params, step=0)


def test_transfer_variables_copies_shared_leaves_keeps_new_ones():
  old = {"params": {"a": {"kernel": np.ones((2, 3))}, "gone": {"bias": np.ones(1)}},
         "batch_stats": {"a_bn": {"mean": np.full(3, 7.0)}}}
  new = {"params": {"a": {"kernel": np.zeros((2, 3))}, "fresh": {"bias": np.full(2, 5.0)}},
         "batch_stats": {"a_bn": {"mean": np.zeros(3)}}}
  result = incremental.transfer_variables(old, new)
  np.testing.assert_array_equal(result["params"]["a"]["kernel"], np.ones((2, 3)))
  np.testing.assert_array_equal(result["params"]["fresh"]["bias"], [5.0, 5.0])
  np.testing.assert_array_equal(result["batch_stats"]["a_bn"]["mean"], [7.0, 7.0, 7.0])
  assert "gone" not in result["params"]
  np.testing.assert_array_equal(new["params"]["a"]["kernel"], np.zeros((2, 3)))  # not mutated


def test_transfer_variables_rejects_shape_mismatch():
  old = {"params": {"head": {"red_conv": {"kernel": np.ones((1, 1, 8, 4))}}}}
  new = {"params": {"head": {"red_conv": {"kernel": np.ones((1, 1, 8, 5))}}}}
  with pytest.raises(ValueError, match="params/head/red_conv/kernel"):
    incremental.transfer_variables(old, new)


# --- configuration errors --------------------------------------------------------------------

def test_unknown_backbone_lists_valid_names(images):
  with pytest.raises(ValueError, match="resnet101.*resnet_tiny|resnet_tiny.*resnet101"):
    deeplab.DeepLabV3(classes_per_step=(2,), backbone="resnet18").init(
        jax.random.key(0), images, train=False)


def test_invalid_output_stride(images):
  with pytest.raises(ValueError, match="output_stride"):
    tiny_model((2,), output_stride=32).init(jax.random.key(0), images, train=False)

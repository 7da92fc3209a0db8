"""The dilated ResNet backbone of the DeepLabV3 used in incremental segmentation (docs/algorithm.md 1.4).

Layout is NHWC throughout. The network is a ResNet v1.5 (the stride of a downsampling
bottleneck sits on its 3x3 convolution) with the standard stem:

  stem_conv (7x7, stride 2) -> stem_bn + act -> 3x3 max pool (stride 2)
  stage1 .. stage4, each a chain of ``Bottleneck`` blocks named ``stage{s}_block{b}``

Normalisation is the field's "in-place ABN": BatchNorm followed by leaky ReLU with slope
0.01. ``activation="relu"`` swaps the leaky ReLU for a plain ReLU everywhere, so that a
backbone converted from torchvision weights (trained with ReLU, see convert.py) runs with
its own activation. Every convolution is bias-free (the BatchNorm after it carries the shift).

To keep spatial detail for segmentation, the last stage(s) trade stride for dilation:

  output stride 16: stage strides 1/2/2/1, every block of stage 4 uses dilation 2
  output stride 8:  stage strides 1/2/1/1, every block of stage 3 dilation 2, stage 4 dilation 4

Padding equals the dilation for 3x3 convolutions (3 for the stem, 1 for the max pool), so
feature sizes are those of the PyTorch reference: ceil(input / output_stride).

Besides the final (activated) feature map, ``ResNet`` returns the residual sum of the last
block of each stage BEFORE its final activation. Distillation methods (PLOP's pooled
outputs, GSC's feature distillation) are defined on these pre-activation tensors: the
negative part, which leaky ReLU squashes by 100x, still carries information there.

Precision: ``dtype`` (``model.compute_dtype``) is the dtype the convolutions and
activations compute in; the parameters are float32 whatever it is, and every BatchNorm
computes its statistics, normalises and keeps its running averages in float32, casting
only its output to ``dtype`` (docs/precision_and_accumulation.md).

Module and parameter names are systematic so that a converter can map PyTorch checkpoints
onto them: ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}/{conv1,bn1,conv2,bn2,conv3,bn3,
downsample_conv,downsample_bn}``.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gsc_jax import errors

LEAKY_RELU_SLOPE = 0.01
BATCH_NORM_MOMENTUM = 0.9  # flax convention: PyTorch's momentum 0.1
BATCH_NORM_EPSILON = 1e-5
BOTTLENECK_EXPANSION = 4

# PyTorch's default Conv2d initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming
# uniform with a = sqrt(5)): MiB's and PLOP's ResNet has no init code of its own, so this is
# what their backbone starts from without pretrained weights. The scale matters even before
# a BatchNorm: the effective step size of SGD goes as lr / |w|^2.
conv_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Depth and width of one ResNet variant."""
  blocks_per_stage: tuple[int, int, int, int]
  base_width: int  # stem channels and stage-1 bottleneck width; doubles every stage


BACKBONES = {
    "resnet101": BackboneSpec(blocks_per_stage=(3, 4, 23, 3), base_width=64),
    "resnet50": BackboneSpec(blocks_per_stage=(3, 4, 6, 3), base_width=64),
    # A small network for CPU work and tests: 512 output channels.
    "resnet_tiny": BackboneSpec(blocks_per_stage=(1, 1, 1, 1), base_width=16),
}

# Per output stride: (stride, dilation) of each of the four stages.
STAGE_STRIDES_AND_DILATIONS = {
    16: ((1, 1), (2, 1), (2, 1), (1, 2)),
    8: ((1, 1), (2, 1), (1, 2), (1, 4)),
}


def backbone_spec(name: str) -> BackboneSpec:
  """The spec of a named backbone; ValueError listing the valid names otherwise."""
  if name not in BACKBONES:
    raise errors.InputError(f"unknown backbone {name!r}; valid names: {sorted(BACKBONES)}")
  return BACKBONES[name]


def check_output_stride(output_stride: int) -> None:
  if output_stride not in STAGE_STRIDES_AND_DILATIONS:
    raise errors.InputError(f"output_stride must be one of {sorted(STAGE_STRIDES_AND_DILATIONS)}, "
                     f"got {output_stride}")


def leaky_relu(x):
  """The activation of in-place ABN."""
  return nn.leaky_relu(x, negative_slope=LEAKY_RELU_SLOPE)


ACTIVATIONS = {"leaky_relu": leaky_relu, "relu": nn.relu}


def activation_function(name: str):
  """The activation called ``name``: "leaky_relu" (slope 0.01, in-place ABN) or "relu"."""
  if name not in ACTIVATIONS:
    raise errors.InputError(f"unknown activation {name!r}; valid names: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def batch_norm(train: bool, name: str, dtype: Any = jnp.float32) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults: batch statistics in training, running ones otherwise.

  ``dtype`` is the dtype of its output (the compute dtype, docs/precision_and_accumulation.md);
  whatever it is, the batch statistics, the normalisation itself, the scale and bias and the
  running averages are float32 (flax reduces in float32 and keeps ``batch_stats`` float32).

  Under ``jax.jit`` with the batch sharded over devices the statistics are global, i.e. the
  "sync" of in-place ABN sync. Variance is computed in two passes (as PyTorch does) rather
  than as E[x^2] - E[x]^2, which loses precision when the mean is large (measured cost on
  the tiny model: within noise). One difference remains: flax stores the biased batch
  variance in the running average where PyTorch stores the unbiased one (factor n/(n-1),
  n = pixels per channel in the batch), negligible at segmentation batch sizes.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                      epsilon=BATCH_NORM_EPSILON, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, force_float32_reductions=True, name=name)


def pooled_running_averages(batch_stats, micro_batch_updates):
  """The running averages after one batch made of k equal-size
  micro-batches, exactly as if their union had been one batch (gradient accumulation,
  docs/precision_and_accumulation.md).

  ``batch_stats``: the running averages before the batch. ``micro_batch_updates``: for each
  micro-batch, the ``batch_stats`` that its train-mode forward returned when it was given
  running averages of ZERO (so each leaf holds ``(1 - momentum) * statistic`` of that
  micro-batch; train mode never reads the running averages), stacked on a leading axis of
  size k.
  Per BatchNorm, with ``mu_j`` and ``v_j`` the mean and biased variance of micro-batch j:

    mu = mean_j mu_j,   v = mean_j v_j + mean_j (mu_j - mu)^2   (law of total variance)
    mean <- momentum * mean + (1 - momentum) * mu,   var <- momentum * var + (1 - momentum) * v

  the batch mean and biased variance of the union of the micro-batches (equal sizes).
  """
  rate = 1.0 - BATCH_NORM_MOMENTUM

  def pooled(old, updates):
    if set(old) == {"mean", "var"} and not isinstance(old["mean"], dict):
      means = updates["mean"] / rate
      variances = updates["var"] / rate
      mean = jnp.mean(means, axis=0)
      variance = jnp.mean(variances, axis=0) + jnp.mean(jnp.square(means - mean), axis=0)
      return {"mean": BATCH_NORM_MOMENTUM * old["mean"] + rate * mean,
              "var": BATCH_NORM_MOMENTUM * old["var"] + rate * variance}
    return {name: pooled(old[name], updates[name]) for name in old}

  return pooled(batch_stats, micro_batch_updates)


def conv(features: int, kernel_size: int, name: str, stride: int = 1,
         dilation: int = 1, padding: int = 0, kernel_init=conv_kernel_init,
         dtype: Any = jnp.float32) -> nn.Conv:
  """A bias-free square convolution with explicit symmetric padding (PyTorch semantics),
  computing in ``dtype`` with a float32 kernel."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 kernel_dilation=(dilation, dilation), use_bias=False,
                 kernel_init=kernel_init, dtype=dtype, param_dtype=jnp.float32, name=name)


class Bottleneck(nn.Module):
  """1x1 (reduce) -> 3x3 (stride, dilation) -> 1x1 (expand x4), plus the shortcut.

  Returns the residual sum BEFORE the final activation; the caller applies the activation
  (and keeps the pre-activation tensor when it is the last block of a stage).
  """
  width: int
  stride: int = 1
  dilation: int = 1
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool):
    out_channels = self.width * BOTTLENECK_EXPANSION
    act = activation_function(self.activation)
    dtype = self.dtype

    y = conv(self.width, 1, name="conv1", dtype=dtype)(x)
    y = act(batch_norm(train, "bn1", dtype)(y))
    y = conv(self.width, 3, name="conv2", stride=self.stride, dilation=self.dilation,
             padding=self.dilation, dtype=dtype)(y)
    y = act(batch_norm(train, "bn2", dtype)(y))
    y = conv(out_channels, 1, name="conv3", dtype=dtype)(y)
    y = batch_norm(train, "bn3", dtype)(y)  # no activation before the sum

    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = conv(out_channels, 1, name="downsample_conv", stride=self.stride,
                      dtype=dtype)(x)
      shortcut = batch_norm(train, "downsample_bn", dtype)(shortcut)  # no activation
    return y + shortcut


class ResNet(nn.Module):
  """Stem and four bottleneck stages with the stride/dilation schedule of ``output_stride``.

  Returns ``(features, stage_pre_activations)``: the activated output of the last stage
  (the input of the segmentation head) and a tuple with, for each of the four stages, the
  pre-activation residual sum of its last block, all in the compute dtype ``dtype``.
  """
  blocks_per_stage: tuple[int, ...]
  base_width: int = 64
  output_stride: int = 16
  activation: str = "leaky_relu"  # or "relu" (see ACTIVATIONS)
  dtype: Any = jnp.float32  # compute dtype of every layer (float32 or bfloat16)

  @nn.compact
  def __call__(self, x, train: bool):
    check_output_stride(self.output_stride)
    act = activation_function(self.activation)

    x = conv(self.base_width, 7, name="stem_conv", stride=2, padding=3, dtype=self.dtype)(x)
    x = act(batch_norm(train, "stem_bn", self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    stage_pre_activations = []
    schedule = STAGE_STRIDES_AND_DILATIONS[self.output_stride]
    for stage_index, (num_blocks, (stride, dilation)) in enumerate(
        zip(self.blocks_per_stage, schedule)):
      width = self.base_width * 2 ** stage_index
      for block_index in range(num_blocks):
        pre_activation = Bottleneck(
            width=width, stride=stride if block_index == 0 else 1, dilation=dilation,
            activation=self.activation, dtype=self.dtype,
            name=f"stage{stage_index + 1}_block{block_index}")(x, train)
        x = act(pre_activation)
      stage_pre_activations.append(pre_activation)
    return x, tuple(stage_pre_activations)


def make_resnet(backbone: str, output_stride: int = 16, activation: str = "leaky_relu",
                **module_kwargs) -> ResNet:
  """The named backbone (see ``BACKBONES``) at the given output stride and activation."""
  spec = backbone_spec(backbone)
  check_output_stride(output_stride)
  activation_function(activation)  # fail now on an unknown name
  return ResNet(blocks_per_stage=spec.blocks_per_stage, base_width=spec.base_width,
                output_stride=output_stride, activation=activation, **module_kwargs)


def output_channels(name: str) -> int:
  """Channels of the backbone's final feature map (2048 for ResNet-50/101)."""
  return backbone_spec(name).base_width * 2 ** 3 * BOTTLENECK_EXPANSION


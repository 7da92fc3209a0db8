"""DeepLabV3 with one classifier per incremental step, as used by MiB, PLOP and GSC.

  images [B, H, W, 3]
    -> ResNet backbone (resnet.py), output stride 16 or 8     -> [B, h, w, C_backbone]
    -> ASPPHead: atrous pyramid + added image-pool branch     -> [B, h, w, head_channels]
    -> classifier_0 | classifier_1 | ... (1x1 conv with bias), concatenated in step order
                                                              -> logits_low [B, h, w, K]
    -> bilinear upsampling to the input size                  -> logits [B, H, W, K]

K = sum(classes_per_step); step 0's classifier includes the background channel. Keeping one
classifier per step (rather than one growing conv) means the parameters of earlier steps
keep their names and shapes when the model grows, so transferring them is a plain copy
(incremental.transfer_variables) and the new step's classifier is the only fresh leaf.

Module names follow the PyTorch reference (MiB's ``DeeplabV3`` head) so that checkpoint
conversion is a name-for-name mapping.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsc_jax.models import resnet


def head_kernel_init(activation: str):
  """MiB's and PLOP's head initialisation (modules/deeplab.py ``reset_parameters``): Xavier
  normal with the activation's gain, ``gain^2 = 2 / (1 + slope^2)`` (PyTorch's
  ``calculate_gain``; slope 0 for ReLU)."""
  slope = resnet.LEAKY_RELU_SLOPE if activation == "leaky_relu" else 0.0
  return nn.initializers.variance_scaling(2.0 / (1.0 + slope ** 2), "fan_avg", "normal")


def classifier_bias_init(fan_in: int):
  """PyTorch's default Conv2d bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the per-step
  classifiers of MiB and PLOP are plain ``nn.Conv2d``s."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# Dilations of the three 3x3 pyramid branches per output stride.
PYRAMID_DILATIONS = {16: (6, 12, 18), 8: (12, 24, 32)}  # MiB and PLOP: 32, not 36


class ASPPHead(nn.Module):
  """DeepLabV3 head in MiB's variant: image pooling is ADDED to the pyramid, not concatenated.

  Pyramid: ``map_conv0`` (1x1) and ``map_conv1..3`` (3x3, dilations 6/12/18 at OS16), each
  ``channels`` wide and bias-free, concatenated -> ``map_bn`` + act -> ``red_conv`` (1x1).
  Image pool: spatial mean -> ``global_pooling_conv`` (1x1) -> ``global_pooling_bn`` + act ->
  ``pool_red_conv`` (1x1), broadcast over space and added to the pyramid output.
  The sum goes through ``red_bn`` + act. There is no dropout. ``act`` is the backbone's
  activation (``resnet.ACTIVATIONS``): leaky ReLU 0.01 by default.
  """
  channels: int = 256
  output_stride: int = 16
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(resnet.conv, kernel_init=head_kernel_init(self.activation),
                             dtype=self.dtype)
    batch_norm = functools.partial(resnet.batch_norm, dtype=self.dtype)
    act = resnet.activation_function(self.activation)

    branches = [conv(self.channels, 1, name="map_conv0")(x)]
    for index, dilation in enumerate(PYRAMID_DILATIONS[self.output_stride]):
      branches.append(conv(self.channels, 3, name=f"map_conv{index + 1}",
                           dilation=dilation, padding=dilation)(x))
    pyramid = act(batch_norm(train, "map_bn")(jnp.concatenate(branches, axis=-1)))
    pyramid = conv(self.channels, 1, name="red_conv")(pyramid)

    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    pooled = conv(self.channels, 1, name="global_pooling_conv")(pooled)
    pooled = act(batch_norm(train, "global_pooling_bn")(pooled))
    pooled = conv(self.channels, 1, name="pool_red_conv")(pooled)

    return act(batch_norm(train, "red_bn")(pyramid + pooled))  # pooled broadcasts over h, w


def upsample_bilinear(x, height: int, width: int):
  """Bilinear resize with half-pixel centres (PyTorch's align_corners=False), no antialias."""
  shape = (x.shape[0], height, width, x.shape[-1])
  return jax.image.resize(x, shape, method="bilinear", antialias=False)


class DeepLabV3(nn.Module):
  """Backbone + ASPP head + one 1x1 classifier per incremental step.

  ``__call__(images, train)`` returns a dict:
    logits      [B, H, W, K]  upsampled to the input size (every pixel loss and argmax uses it)
    logits_low  [B, h, w, K]  at feature resolution
    head        [B, h, w, head_channels]  the head output the classifiers read
    stages      four arrays: pre-activation output of each ResNet stage's last block
  The last three exist for distillation between the previous-step and current model.
  ``activation`` ("leaky_relu" or "relu") is used by the backbone and the head alike.

  ``dtype`` (``model.compute_dtype``: float32 or bfloat16) is what the backbone and the head
  compute in; parameters and BN statistics are float32 either way. Every output is float32:
  ``head`` and ``stages`` are cast to float32 where the network produces them, the
  classifiers (1x1, a negligible share of the compute) run in float32 on the float32 head,
  and the upsampling is float32. So every loss, its gradient with respect to the logits
  and GSC's compensation transform compute in float32 (docs/precision_and_accumulation.md).
  """
  classes_per_step: tuple[int, ...]
  backbone: str = "resnet101"
  output_stride: int = 16
  head_channels: int = 256
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    encoder = resnet.make_resnet(self.backbone, self.output_stride, self.activation,
                                 dtype=self.dtype, name="backbone")
    features, stages = encoder(images, train)
    head = ASPPHead(channels=self.head_channels, output_stride=self.output_stride,
                    activation=self.activation, dtype=self.dtype, name="head")(features, train)
    head = head.astype(jnp.float32)
    stages = tuple(stage.astype(jnp.float32) for stage in stages)

    per_step_logits = [
        nn.Conv(num_classes, (1, 1), use_bias=True, kernel_init=resnet.conv_kernel_init,
                bias_init=classifier_bias_init(self.head_channels), dtype=jnp.float32,
                param_dtype=jnp.float32, name=f"classifier_{step}")(head)
        for step, num_classes in enumerate(self.classes_per_step)]
    logits_low = jnp.concatenate(per_step_logits, axis=-1)

    logits = upsample_bilinear(logits_low, images.shape[1], images.shape[2])
    return {"logits": logits, "logits_low": logits_low, "head": head, "stages": stages}

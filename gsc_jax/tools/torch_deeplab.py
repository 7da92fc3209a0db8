"""The project's DeepLabV3 (gsc_jax/models/resnet.py + deeplab.py) in PyTorch, layer by layer.

A reference network for speed comparisons (``python -m gsc_jax.tools.performance``): same
layers, widths, strides, dilations, paddings, activation and parameter count as the JAX
model, in PyTorch's NCHW layout. The JAX model's initialisers are not reproduced (the
values do not change a step's cost).

This module imports torch. The main program never imports it; torch is not a runtime
dependency of gsc_jax.

Layer for layer (resnet.py, deeplab.py):

* bias-free convolutions; BatchNorm (eps 1e-5, PyTorch momentum 0.1 = flax 0.9) followed
  by leaky ReLU 0.01 (or ReLU); no activation before a residual sum;
* stem 7x7 stride 2 padding 3 -> BN + act -> 3x3 max pool stride 2 padding 1;
* ResNet v1.5 bottlenecks (stride on the 3x3), a projection shortcut when the stride or
  the width changes; stage strides and dilations of the output stride (16: stage 4
  dilation 2; 8: stage 3 dilation 2, stage 4 dilation 4); 3x3 padding = dilation;
* the ASPP head of MiB: 1x1 + three dilated 3x3 branches concatenated -> BN + act -> 1x1,
  plus an image-pool branch (mean -> 1x1 -> BN + act -> 1x1) ADDED, -> BN + act;
* one 1x1 classifier with bias per incremental step, concatenated; bilinear upsampling
  with half-pixel centres (align_corners=False) to the input size.

The image-pool branch's BatchNorm sees a 1x1 map: with a batch of one image PyTorch's
``BatchNorm2d`` refuses to train on it ("Expected more than 1 value per channel"), while
flax normalises it (zero variance, the output is the BN shift). ``PooledBatchNorm``
computes the batch statistics itself so that batch 1 (the R101-512 setting) runs as in
JAX.
"""

import torch
from torch import nn
from torch.nn import functional as F

LEAKY_RELU_SLOPE = 0.01
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.1  # PyTorch convention (flax 0.9)
BOTTLENECK_EXPANSION = 4
IGNORE_LABEL = 255

# Mirrors resnet.BACKBONES: blocks per stage and base width.
BACKBONES = {
    "resnet101": ((3, 4, 23, 3), 64),
    "resnet50": ((3, 4, 6, 3), 64),
    "resnet_tiny": ((1, 1, 1, 1), 16),
}
STAGE_STRIDES_AND_DILATIONS = {
    16: ((1, 1), (2, 1), (2, 1), (1, 2)),
    8: ((1, 1), (2, 1), (1, 2), (1, 4)),
}
PYRAMID_DILATIONS = {16: (6, 12, 18), 8: (12, 24, 32)}


def make_activation(name: str) -> nn.Module:
  if name == "leaky_relu":
    return nn.LeakyReLU(LEAKY_RELU_SLOPE)
  if name == "relu":
    return nn.ReLU()
  raise ValueError(f"unknown activation {name!r}; valid: leaky_relu, relu")


def batch_norm(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM)


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
         dilation: int = 1, padding: int = 0, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                   dilation=dilation, bias=bias)


class PooledBatchNorm(nn.BatchNorm2d):
  """BatchNorm2d whose training-mode statistics are computed here, so that a single 1x1
  feature map (batch 1) is normalised as flax does instead of raising (module docstring)."""

  def forward(self, x):
    if not self.training:
      return super().forward(x)
    mean = x.mean(dim=(0, 2, 3))
    variance = x.var(dim=(0, 2, 3), unbiased=False)
    with torch.no_grad():
      count = x.numel() // x.shape[1]
      unbiased = variance * (count / max(count - 1, 1))
      self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
      self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
      self.num_batches_tracked.add_(1)
    scale = self.weight * torch.rsqrt(variance + self.eps)
    shift = self.bias - mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
  """resnet.Bottleneck: returns the residual sum before the final activation."""

  def __init__(self, in_channels: int, width: int, stride: int, dilation: int,
               activation: str):
    super().__init__()
    out_channels = width * BOTTLENECK_EXPANSION
    self.conv1 = conv(in_channels, width, 1)
    self.bn1 = batch_norm(width)
    self.conv2 = conv(width, width, 3, stride=stride, dilation=dilation, padding=dilation)
    self.bn2 = batch_norm(width)
    self.conv3 = conv(width, out_channels, 1)
    self.bn3 = batch_norm(out_channels)
    self.act = make_activation(activation)
    self.downsample = None
    if stride != 1 or in_channels != out_channels:
      self.downsample = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride),
                                      batch_norm(out_channels))

  def forward(self, x):
    y = self.act(self.bn1(self.conv1(x)))
    y = self.act(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return y + shortcut


class ResNet(nn.Module):
  """resnet.ResNet: returns the final activated features and the four stages' last
  pre-activation sums."""

  def __init__(self, backbone: str, output_stride: int, activation: str):
    super().__init__()
    if backbone not in BACKBONES:
      raise ValueError(f"unknown backbone {backbone!r}; valid: {sorted(BACKBONES)}")
    blocks_per_stage, base_width = BACKBONES[backbone]
    self.stem_conv = conv(3, base_width, 7, stride=2, padding=3)
    self.stem_bn = batch_norm(base_width)
    self.act = make_activation(activation)
    self.pool = nn.MaxPool2d(3, stride=2, padding=1)
    self.stages = nn.ModuleList()
    in_channels = base_width
    schedule = STAGE_STRIDES_AND_DILATIONS[output_stride]
    for stage_index, (num_blocks, (stride, dilation)) in enumerate(
        zip(blocks_per_stage, schedule)):
      width = base_width * 2 ** stage_index
      blocks = nn.ModuleList()
      for block_index in range(num_blocks):
        blocks.append(Bottleneck(in_channels, width, stride if block_index == 0 else 1,
                                 dilation, activation))
        in_channels = width * BOTTLENECK_EXPANSION
      self.stages.append(blocks)
    self.out_channels = in_channels

  def forward(self, x):
    x = self.pool(self.act(self.stem_bn(self.stem_conv(x))))
    stages = []
    for blocks in self.stages:
      for block in blocks:
        pre_activation = block(x)
        x = self.act(pre_activation)
      stages.append(pre_activation)
    return x, stages


class ASPPHead(nn.Module):
  """deeplab.ASPPHead (MiB's variant: the image-pool branch is added)."""

  def __init__(self, in_channels: int, channels: int, output_stride: int, activation: str):
    super().__init__()
    self.map_convs = nn.ModuleList(
        [conv(in_channels, channels, 1)]
        + [conv(in_channels, channels, 3, dilation=d, padding=d)
           for d in PYRAMID_DILATIONS[output_stride]])
    self.map_bn = batch_norm(4 * channels)
    self.red_conv = conv(4 * channels, channels, 1)
    self.global_pooling_conv = conv(in_channels, channels, 1)
    self.global_pooling_bn = PooledBatchNorm(channels, eps=BATCH_NORM_EPSILON,
                                             momentum=BATCH_NORM_MOMENTUM)
    self.pool_red_conv = conv(channels, channels, 1)
    self.red_bn = batch_norm(channels)
    self.act = make_activation(activation)

  def forward(self, x):
    pyramid = torch.cat([branch(x) for branch in self.map_convs], dim=1)
    pyramid = self.red_conv(self.act(self.map_bn(pyramid)))
    pooled = x.mean(dim=(2, 3), keepdim=True)
    pooled = self.act(self.global_pooling_bn(self.global_pooling_conv(pooled)))
    pooled = self.pool_red_conv(pooled)
    return self.act(self.red_bn(pyramid + pooled))


class DeepLabV3(nn.Module):
  """deeplab.DeepLabV3: backbone, head, one classifier per step, upsampled logits.

  ``forward(images [B, 3, H, W])`` returns the logits [B, K, H, W].
  """

  def __init__(self, classes_per_step, backbone: str = "resnet101", output_stride: int = 16,
               head_channels: int = 256, activation: str = "leaky_relu"):
    super().__init__()
    if output_stride not in STAGE_STRIDES_AND_DILATIONS:
      raise ValueError(f"output_stride must be one of {sorted(STAGE_STRIDES_AND_DILATIONS)}")
    self.backbone = ResNet(backbone, output_stride, activation)
    self.head = ASPPHead(self.backbone.out_channels, head_channels, output_stride, activation)
    self.classifiers = nn.ModuleList(
        [conv(head_channels, num_classes, 1, bias=True) for num_classes in classes_per_step])

  def forward(self, images):
    features, _ = self.backbone(images)
    head = self.head(features)
    logits_low = torch.cat([classifier(head) for classifier in self.classifiers], dim=1)
    return F.interpolate(logits_low, size=images.shape[2:], mode="bilinear",
                         align_corners=False)


def from_config(config, classifier_sizes) -> DeepLabV3:
  """The PyTorch twin of ``step_model.make_model(config, classifier_sizes)``."""
  model = config.model
  return DeepLabV3(tuple(classifier_sizes), backbone=model.backbone,
                   output_stride=model.output_stride, head_channels=model.head_channels,
                   activation=model.activation)


def parameter_count(network: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
  return sum(parameter.numel() for parameter in network.parameters())


def cross_entropy(logits, labels):
  """gsc_jax.losses.weighted_cross_entropy with nu = 1: the sum over labelled pixels of
  ``-log softmax(z)_y`` divided by ALL pixels (ignored ones count as 0)."""
  total = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum")
  return total / labels.numel()


def make_train_step(network: nn.Module, optim_config, learning_rate: float):
  """``step(images [B, 3, H, W] float32, labels [B, H, W] int64) -> loss``: one SGD step
  with the project's optimiser settings (Nesterov momentum, weight decay added to the
  gradient), as the JAX train step at step 0 (plain cross-entropy)."""
  optimizer = torch.optim.SGD(network.parameters(), lr=learning_rate,
                              momentum=optim_config.momentum,
                              nesterov=optim_config.nesterov,
                              weight_decay=optim_config.weight_decay)
  network.train()

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(network(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step

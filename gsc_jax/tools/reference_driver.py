"""Runs one step of MiB's or PLOP's released training program (their ``run.main``) on the CPU.

This file is a script for the reference interpreter (PyTorch and torchvision, no JAX); it
imports nothing from gsc_jax, and gsc_jax never imports it. ``compare_reference`` starts it
once per incremental step, as the released shell scripts start ``run.py``:

  REFERENCE_PYTHON gsc_jax/tools/reference_driver.py --code=/path/to/MiB \\
      --result=step0.json -- --data_root=... --task=15-5 --step=0 --lr=0.05 ...

Everything after ``--`` goes to the released program's own argument parser unchanged. The
released code is imported from ``--code`` at run time; nothing of it is copied here. What
this driver changes around it, and nothing else (docs/reference_comparison.md):

- ``inplace_abn`` (a CUDA extension) is replaced by BatchNorm2d followed by the activation
  the module names (leaky ReLU 0.01; "identity" where the residual blocks switch it off).
- ``apex`` (mixed precision, CUDA) is replaced by fp32: ``amp.initialize`` returns its
  arguments, ``amp.scale_loss`` yields the loss, and ``DistributedDataParallel`` is a
  wrapper that only holds ``.module`` (so checkpoints keep their ``module.`` keys).
- One process: ``torch.distributed`` starts a gloo group of size 1 instead of NCCL, the
  device is the CPU (``--local_rank=cpu``), ``Module.cuda`` and ``torch.cuda.set_device``
  do nothing, and ``torch.load`` reads the program's own checkpoints with
  ``weights_only=False`` (they hold optimiser state, as the released code expects).
- The network is the project's ``resnet_tiny`` built from the released modules: their
  ``ResNet`` with one bottleneck block per stage, every layer rebuilt at base width 16
  (stem 16, bottleneck widths 16/32/64/128, 512 output channels), and their DeeplabV3 head
  and classifiers at ``--head_channels`` (64) instead of the hard-coded 256. Their modules'
  own initialisation (PyTorch defaults, the head's Xavier normal) applies unchanged.

The test evaluation of the step (the last ``Trainer.validate`` call of ``run.main``, on the
test images of every class seen so far) is written to ``--result`` as JSON: the confusion
matrix of their ``StreamSegMetrics`` (rows: ground truth), their mean IoU, the number of
test images and of parameters, and the wall time; ``--export`` also writes the evaluated
model. Instead of training, ``--train_check`` runs a few iterations of their
``Trainer.train`` on one fixed batch, and ``--data_check`` summarises their augmented
training data, for ``compare_reference``'s component checks.
"""

import argparse
import contextlib
import functools
import inspect
import json
import os
import random
import socket
import sys
import time
import types


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--code", required=True,
                      help="checkout of fcdl94/MiB or arthurdouillard/CVPR2021_PLOP")
  parser.add_argument("--result", default="",
                      help="JSON file for the step's test score (needed to train a step)")
  parser.add_argument("--base_width", type=int, default=16,
                      help="backbone stem width (resnet_tiny: 16)")
  parser.add_argument("--head_channels", type=int, default=64,
                      help="DeeplabV3 head width (the comparison's tiny network: 64)")
  parser.add_argument("--export", default="",
                      help="also write the step's final model (their state dict) to this .npz")
  parser.add_argument("--train_check", default="",
                      help="instead of run.main: write to this .npz the model before and after "
                           "each of --check_iterations iterations of their Trainer.train on "
                           "one batch of their step-0 training loader")
  parser.add_argument("--check_iterations", type=int, default=3)
  parser.add_argument("--data_check", default="",
                      help="instead of run.main: write to this .npz the label histogram and "
                           "image moments of --check_epochs epochs of their step-0 training "
                           "dataset (augmented as in training)")
  parser.add_argument("--check_epochs", type=int, default=2)
  parser.add_argument("--threads", type=int, default=0,
                      help="torch intra-op threads (0: PyTorch's default)")
  parser.add_argument("program_args", nargs=argparse.REMAINDER,
                      help="-- then the released run.py's arguments")
  args = parser.parse_args(argv)
  if args.program_args[:1] == ["--"]:
    args.program_args = args.program_args[1:]
  return args


def install_inplace_abn_stand_in(torch):
  """An ``inplace_abn`` module whose ABN classes are BatchNorm2d + activation."""
  functional = torch.nn.functional

  class ABN(torch.nn.BatchNorm2d):
    """BatchNorm2d (momentum 0.1, eps 1e-5, as in-place ABN) then ``self.activation``, read at
    every call because the released residual blocks set it to "identity" after building."""

    def __init__(self, num_features, activation="leaky_relu", activation_param=0.01,
                 momentum=0.1, eps=1e-5, **unused):
      super().__init__(num_features, eps=eps, momentum=momentum)
      self.activation = activation
      self.activation_param = activation_param

    def forward(self, x):
      x = super().forward(x)
      if self.activation == "leaky_relu":
        return functional.leaky_relu(x, negative_slope=self.activation_param)
      if self.activation == "elu":
        return functional.elu(x, alpha=self.activation_param)
      if self.activation == "identity":
        return x
      raise ValueError(f"the stand-in ABN has no activation {self.activation!r}")

  module = types.ModuleType("inplace_abn")
  module.ABN = module.InPlaceABN = module.InPlaceABNSync = ABN
  sys.modules["inplace_abn"] = module


def install_apex_stand_in(torch):
  """An ``apex`` package running in fp32 on one process."""

  def initialize(models, optimizers, opt_level=None, **unused):
    del opt_level
    return models, optimizers

  @contextlib.contextmanager
  def scale_loss(loss, optimizer, **unused):
    del optimizer
    yield loss

  class DistributedDataParallel(torch.nn.Module):
    """Holds the model as ``.module``, as apex's wrapper does; nothing to synchronise."""

    def __init__(self, module, **unused):
      super().__init__()
      self.module = module

    def forward(self, *args, **kwargs):
      return self.module(*args, **kwargs)

  apex = types.ModuleType("apex")
  apex.amp = types.ModuleType("apex.amp")
  apex.amp.initialize = initialize
  apex.amp.scale_loss = scale_loss
  apex.parallel = types.ModuleType("apex.parallel")
  apex.parallel.DistributedDataParallel = DistributedDataParallel
  sys.modules.update({"apex": apex, "apex.amp": apex.amp, "apex.parallel": apex.parallel})


def run_on_one_cpu_process(torch):
  """gloo instead of NCCL in a group of one; CUDA calls that would fail become no-ops."""
  with socket.socket() as free:
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
  os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                     "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
  init_process_group = torch.distributed.init_process_group

  def gloo_process_group(backend=None, init_method=None, **kwargs):
    del backend
    init_process_group(backend="gloo", init_method=init_method or "env://", **kwargs)

  torch.distributed.init_process_group = gloo_process_group
  torch.cuda.set_device = lambda device: None
  torch.nn.Module.cuda = lambda self, device=None: self
  torch.load = functools.partial(torch.load, weights_only=False)


def install_tiny_network(torch, base_width: int, head_channels: int):
  """``models.net_resnet_tiny`` and a head of ``head_channels``, both of the released modules."""
  import models  # pylint: disable=import-outside-toplevel  (the released code)
  import modules  # pylint: disable=import-outside-toplevel
  import segmentation_module  # pylint: disable=import-outside-toplevel

  def net_resnet_tiny(norm_act, output_stride):
    """Their ResNet (one bottleneck per stage) with every layer rebuilt at ``base_width``."""
    body = models.resnet.ResNet(structure=[1, 1, 1, 1], bottleneck=True, norm_act=norm_act,
                                output_stride=output_stride)
    body.mod1.conv1 = torch.nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
    body.mod1.bn1 = norm_act(base_width)
    in_channels, width = base_width, base_width
    for stage in range(4):
      stage_module = getattr(body, f"mod{stage + 2}")
      for name, block in list(stage_module.named_children()):
        options = dict(norm_act=norm_act, stride=block.convs.conv2.stride[0],
                       dilation=block.convs.conv2.dilation[0])
        if hasattr(block, "_last"):  # PLOP's blocks also return their pre-activation sum
          options["last"] = block._last  # pylint: disable=protected-access
        setattr(stage_module, name,
                modules.ResidualBlock(in_channels, (width, width, 4 * width), **options))
        in_channels = 4 * width
      width *= 2
    body.out_channels = in_channels
    return body

  models.net_resnet_tiny = net_resnet_tiny
  released_head = segmentation_module.DeeplabV3
  released_make_model = segmentation_module.make_model

  def narrow_head(in_channels, out_channels, hidden_channels=256, **kwargs):
    del out_channels, hidden_channels
    return released_head(in_channels, head_channels, head_channels, **kwargs)

  def make_model(opts, classes=None):
    """Their make_model; its classifiers (built for 256 head channels) rebuilt at the head's
    width. Their class refers to itself by its global name, so it cannot be subclassed here."""
    model = released_make_model(opts, classes)
    for index, classifier in enumerate(model.cls):
      model.cls[index] = torch.nn.Conv2d(head_channels, classifier.out_channels, 1,
                                         bias=classifier.bias is not None)
    model.head_channels = head_channels
    return model

  segmentation_module.DeeplabV3 = narrow_head
  segmentation_module.make_model = make_model  # before run.py imports it by name


def record_test_scores(train_module):
  """Wraps the released ``Trainer.validate``; returns the list its calls append to."""
  calls = []
  validate = train_module.Trainer.validate

  def recording_validate(self, loader, metrics, *args, **kwargs):
    output = validate(self, loader, metrics, *args, **kwargs)
    calls.append({"confusion": metrics.confusion_matrix.astype(int).tolist(),
                  "mean_iou": float(output[1]["Mean IoU"]), "num_images": len(loader.dataset),
                  "num_parameters": sum(p.numel() for p in self.model.parameters()),
                  "state": numpy_state(self.model)})
    return output

  train_module.Trainer.validate = recording_validate
  return calls


def numpy_state(model) -> dict:
  """The model's state dict as numpy arrays, without the DistributedDataParallel prefix."""
  return {key.removeprefix("module."): value.detach().cpu().numpy().copy()
          for key, value in model.state_dict().items()}


def one_step_options(opts):
  """``opts`` for one step, as PLOP's run.main sets them in its loop over ``--step`` (a
  list there, with one ``--lr`` per step); MiB's are already so."""
  if isinstance(opts.step, list):
    opts.step, opts.lr = opts.step[0], opts.lr[0]
  return opts


class OneBatchLoader:
  """A loader of one fixed batch with the ``sampler.set_epoch`` their Trainer.train calls."""

  def __init__(self, images, labels):
    self.batch = (images, labels)
    self.sampler = types.SimpleNamespace(set_epoch=lambda epoch: None)

  def __iter__(self):
    return iter([self.batch])

  def __len__(self):
    return 1


def train_check(torch, opts, path: str, iterations: int) -> None:
  """``iterations`` calls of their ``Trainer.train`` (one iteration each) on one batch of
  their training loader of ``--step``, set up as their run.py sets up a step (make_model,
  at step > 0 the previous model from ``--step_ckpt`` and MiB's balanced initialisation,
  SGD with its parameter groups, PolyLR over the real run's iterations, the wrapper);
  writes the batch, the losses and the model before and after every iteration (and the
  frozen previous model) to ``path``. Step > 0 is MiB's only: PLOP's trainer would also
  need its threshold pass."""
  import run  # pylint: disable=import-outside-toplevel  (the released code)
  import tasks  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  import utils  # pylint: disable=import-outside-toplevel
  from utils.logger import Logger  # pylint: disable=import-outside-toplevel
  from apex.parallel import DistributedDataParallel  # pylint: disable=import-outside-toplevel

  step = one_step_options(opts).step
  if step > 0 and getattr(opts, "pseudo", None):
    sys.exit("--train_check at step > 0 covers MiB only (PLOP's trainer needs its thresholds)")
  torch.distributed.init_process_group(backend="nccl", init_method="env://")
  torch.manual_seed(opts.random_seed)
  random.seed(opts.random_seed)  # their crops and flips draw from Python's random
  train_dataset = run.get_dataset(opts)[0]
  loader = torch.utils.data.DataLoader(train_dataset, batch_size=opts.batch_size,
                                       shuffle=True, drop_last=True)
  images, labels = next(iter(loader))
  classes = tasks.get_per_task_classes(opts.dataset, opts.task, step)
  opts.inital_nb_classes = classes[0]  # PLOP's run.py sets this before make_model
  model = run.make_model(opts, classes=classes)
  groups = [{"params": [p for p in part.parameters() if p.requires_grad],
             "weight_decay": opts.weight_decay} for part in (model.body, model.head, model.cls)]
  learning_rate = opts.lr
  optimizer = torch.optim.SGD(groups, lr=learning_rate, momentum=0.9, nesterov=True)
  max_iterations = opts.epochs * (len(train_dataset) // opts.batch_size)
  scheduler = utils.PolyLR(optimizer, max_iters=max_iterations, power=opts.lr_power)
  model = DistributedDataParallel(model)
  model_old, arrays = None, {}
  if step > 0:  # as run.py loads the previous step
    model_old = DistributedDataParallel(run.make_model(
        opts, classes=tasks.get_per_task_classes(opts.dataset, opts.task, step - 1)))
    previous = torch.load(opts.step_ckpt, map_location="cpu")["model_state"]
    model.load_state_dict(previous, strict=False)
    if opts.init_balanced:
      model.module.init_new_classifier(torch.device("cpu"))
    model_old.load_state_dict(previous, strict=True)
    for parameter in model_old.parameters():
      parameter.requires_grad = False
    model_old.eval()
    arrays.update({f"teacher/{key}": value for key, value in numpy_state(model_old).items()})
  trainer_options = {"step": step} if "step" in inspect.signature(train.Trainer).parameters else {}
  trainer = train.Trainer(model, model_old, device=torch.device("cpu"), opts=opts,
                          classes=classes, **trainer_options)
  logger = Logger("logs", rank=0, summary=False)
  arrays.update({f"iteration0/{key}": value for key, value in numpy_state(model).items()})
  class_losses, other_losses = [], []
  for iteration in range(iterations):
    model.train()
    class_loss, other_loss = trainer.train(cur_epoch=iteration, optim=optimizer,
                                           train_loader=OneBatchLoader(images, labels),
                                           scheduler=scheduler, logger=logger)
    class_losses.append(float(class_loss))
    other_losses.append(float(other_loss))
    arrays.update({f"iteration{iteration + 1}/{key}": value
                   for key, value in numpy_state(model).items()})
  import numpy  # pylint: disable=import-outside-toplevel
  numpy.savez(path, images=images.permute(0, 2, 3, 1).numpy(),  # NCHW -> NHWC
              labels=labels.numpy(), class_losses=numpy.array(class_losses),
              other_losses=numpy.array(other_losses), learning_rate=learning_rate,
              max_iterations=max_iterations, step=step, **arrays)


def data_check(torch, opts, path: str, epochs: int) -> None:
  """Pixel counts per label value and per-channel mean and mean square of the normalised
  images over ``epochs`` passes of their step-0 training dataset, augmented by its own
  transform (random resized crop, flip) as their loader feeds it."""
  import numpy  # pylint: disable=import-outside-toplevel
  import run  # pylint: disable=import-outside-toplevel  (the released code)
  torch.distributed.init_process_group(backend="nccl", init_method="env://")
  random.seed(opts.random_seed)
  train_dataset = run.get_dataset(one_step_options(opts))[0]
  counts, sums, squares, images = numpy.zeros(256), numpy.zeros(3), numpy.zeros(3), 0
  for _ in range(epochs):
    for index in range(len(train_dataset)):
      image, label = train_dataset[index]
      counts += numpy.bincount(label.numpy().ravel(), minlength=256)
      sums += image.numpy().mean(axis=(1, 2))
      squares += (image.numpy() ** 2).mean(axis=(1, 2))
      images += 1
  numpy.savez(path, label_counts=counts, channel_mean=sums / images,
              channel_mean_square=squares / images, images=images)


def main(argv=None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  code = os.path.abspath(args.code)
  if not os.path.isfile(os.path.join(code, "run.py")):
    sys.exit(f"--code={args.code}: no run.py there; give a checkout of fcdl94/MiB or "
             "arthurdouillard/CVPR2021_PLOP")
  os.environ.setdefault("MPLBACKEND", "Agg")  # their metrics module imports pyplot
  import torch  # pylint: disable=import-outside-toplevel
  if args.threads:
    torch.set_num_threads(args.threads)
  sys.path.insert(0, code)
  install_inplace_abn_stand_in(torch)
  install_apex_stand_in(torch)
  run_on_one_cpu_process(torch)
  install_tiny_network(torch, args.base_width, args.head_channels)
  import argparser  # pylint: disable=import-outside-toplevel  (the released code)
  import run  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel
  calls = record_test_scores(train)

  opts = argparser.modify_command_options(argparser.get_argparser().parse_args(args.program_args))
  opts.backbone = "resnet_tiny"  # not among the parser's choices; installed above
  opts.local_rank = "cpu"
  if args.train_check:
    train_check(torch, opts, args.train_check, args.check_iterations)
    return
  if args.data_check:
    data_check(torch, opts, args.data_check, args.check_epochs)
    return
  if not args.result:
    sys.exit("--result is needed to train a step (or give --train_check or --data_check)")
  os.makedirs(getattr(opts, "checkpoint", "checkpoints/step"), exist_ok=True)
  start = time.time()
  run.main(opts)
  if not calls:
    sys.exit("the released run.main returned without a test evaluation")
  state = calls[-1].pop("state")
  if args.export:
    import numpy  # pylint: disable=import-outside-toplevel
    numpy.savez(args.export, **state)
  result = dict(calls[-1], seconds=time.time() - start, torch=torch.__version__)
  with open(args.result, "w", encoding="utf-8") as file:
    json.dump(result, file, indent=1)


if __name__ == "__main__":
  main()

"""The embedded synthetic dataset: a complete incremental experiment on a laptop CPU.

Run (no download needed):

  python -m gsc_jax.main --config=configs/synthetic.py:15-1
  python -m gsc_jax.main --config=configs/synthetic.py:15-1,method=ft
  python -m gsc_jax.main --config=configs/synthetic.py:offline,method=ft   # joint upper bound
  python -m gsc_jax.main --config=configs/synthetic.py:15-1,method=plop
  python -m gsc_jax.main --config=configs/synthetic.py:15-1,method=gsc

Every VOC task name works (21 classes by default); ``data.num_classes=151`` gives ADE-sized
tasks. The images are generated on the fly from (seed, split, index); see
gsc_jax/data/synthetic.py for what each class looks like.

Expected (seed 0, measured on an idle 2-core AMD EPYC CPU; README "Results", which also
gives the spread measured on other machines: "all" 52-60): 15-1 with MiB in 5.7 minutes
(10.4 CPU-minutes; 4.9 minutes when run again, its compiled programs cached), final mIoU
old/new/all 65.2/41.6/59.6; fine-tuning 5.5/8.6/6.3 (it forgets the old classes); joint
training (offline) 71.3 all.

The schedule is shortened for the CPU (6 epochs at step 0, 10 per incremental step, lr
0.05 / 0.01); the other optimiser settings are the published ones.
"""

from configs import common


def get_config(arg: str = "15-1"):
  task, _ = common.parse_arg(arg)
  return common.finalize(demo_config(task), arg)


def demo_config(task: str):
  """The demo's settings before the command line's overrides."""
  config = common.get_base_config("synthetic", task)
  config.data.num_classes = 21
  config.data.image_size = 128
  config.data.num_train_images = 1500
  config.data.num_val_images = 300
  config.data.crop_size = 128
  config.data.eval_size = 128
  config.data.eval_batch_size = 32
  config.model.backbone = "resnet_tiny"
  config.model.head_channels = 64
  config.optim.batch_size = 16
  config.optim.lr_step0 = 0.05
  config.optim.lr_incremental = 0.01
  config.optim.epochs_step0 = 6
  config.optim.epochs_incremental = 10
  config.log_every = 25
  config.checkpoint_every = 100
  return config

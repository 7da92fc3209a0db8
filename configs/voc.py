"""Pascal VOC 2012 with the SBD augmentation (10,582 train_aug / 1,449 val images).

Run:

  python -m gsc_jax.main --config=configs/voc.py:15-1,data.root=/path/to/VOC2012
  python -m gsc_jax.main --config=configs/voc.py:15-1,overlap=false,seed=1,data.root=...

The expected tree under data.root is in the README. The published protocol (ALGORITHM.md
1.6): DeepLabV3 ResNet-101 OS16, global batch 24, crop 512, 30 epochs per step, lr 0.01 at
step 0 and 0.001 afterwards, SGD Nesterov with weight decay 1e-4, poly schedule.

Published numbers to expect (VOC 15-1 overlapped, old/new/all mIoU): MiB 35.1/13.5/29.7,
PLOP 65.1/21.1/54.6, GSC 72.1/24.4/60.7; joint training 77.4.
"""

from configs import common


def get_config(arg: str = "15-1"):
  task, _ = common.parse_arg(arg)
  config = common.get_base_config("voc", task)
  config.data.root = "data/VOC2012"
  config.data.num_classes = 21
  return common.finalize(config, arg)

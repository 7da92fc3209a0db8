"""Pascal VOC 2012 with the SBD augmentation (10,582 train_aug / 1,449 val images).

Run (the tree expected under data.root is in the README):

  python -m gsc_jax.main --config=configs/voc.py:15-1,data.root=/data/VOC2012            # MiB
  python -m gsc_jax.main --config=configs/voc.py:15-1,method=plop,data.root=/data/VOC2012
  python -m gsc_jax.main --config=configs/voc.py:15-1,method=gsc,data.root=/data/VOC2012
  python -m gsc_jax.main --config=configs/voc.py:15-1,overlap=false,data.root=...   # disjoint
  python -m gsc_jax.main --config=configs/voc.py:offline,method=ft,data.root=...    # joint

Tasks: 19-1, 15-5, 15-1 (alias 15-5s), 10-1, 5-3, 10-5-5, offline. Start step 0 from the
ImageNet backbone converted once (README "Pretrained backbones"):
``model.pretrained=pretrained/resnet101_iabn.npz``. First check the data against the
published image counts: ``python -m gsc_jax.tools.check_voc_counts --root=/data/VOC2012``.

Published protocol (docs/algorithm.md 1.6): DeepLabV3 ResNet-101 OS16, global batch 24, crop
512, 30 epochs per step, lr 0.01 at step 0 and 0.001 afterwards, SGD Nesterov momentum 0.9,
weight decay 1e-4, poly schedule; evaluation: shorter side 512, centre crop 512. Per-task
published values (PUBLISHED in each gsc_jax/methods/<method>.py, applied to fields you leave
unset): MiB 15-1 distillation weight 100 (10 otherwise); PLOP and GSC 10-1 10 epochs per
incremental step.

Published numbers to expect (overlapped, final old/new/all mIoU %, docs/algorithm.md 6):
  15-1:  MiB 35.1/13.5/29.7   PLOP 65.1/21.1/54.6   GSC 72.1/24.4/60.7
  15-5:  GSC 78.3/54.2/72.6    19-1: GSC 76.9/42.7/75.3    10-1: GSC 50.6/17.3/34.7
  joint training (offline): 77.4
MiB's and PLOP's numbers for the other tasks are in their papers' tables (not restated here).
"""

from configs import common


def get_config(arg: str = "15-1"):
  task, _ = common.parse_arg(arg)
  config = common.get_base_config("voc", task)
  config.data.root = "data/VOC2012"
  config.data.num_classes = 21
  return common.finalize(config, arg)

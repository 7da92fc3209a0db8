"""Cityscapes, domain-incremental: every step learns all 19 classes on new cities.

Run (the tree expected under data.root is in the README):

  python -m gsc_jax.main --config=configs/cityscapes.py:11-5,method=plop,data.root=/data/cityscapes
  python -m gsc_jax.main --config=configs/cityscapes.py:11-1,method=mib,data.root=...
  python -m gsc_jax.main --config=configs/cityscapes.py:1-1,method=gsc,data.root=...
  python -m gsc_jax.main --config=configs/cityscapes.py:offline,method=ft,data.root=...

Tasks (PLOP's protocol): 11-5, 11-1, 1-1 over the 21 cities of the train and val folders
(gtFine labelIds mapped to the 19 train ids, everything else 255) in PLOP's city order
(gsc_jax/tasks.py). Each city's images are split once into 80% train and 20% test
(data.domain_test_fraction, data.domain_split_seed); step t is tested on the test images of
every city seen so far. The classifier never grows, so there is no background shift: the
unbiased losses reduce to the plain ones, Local POD's class factor is 1, and pseudo-labels,
gradient compensation and prototypes are off (gsc = PLOP + relation distillation here).

Published protocol (PLOP's scripts/cityscapesDomain): ResNet-101 OS16, batch 12, crop 512,
50 epochs per step, lr 0.01 / 0.001, Local POD 0.01 / 0.0005; evaluation: shorter side 512,
centre crop 512.

Published numbers: docs/algorithm.md 6 lists none for Cityscapes; PLOP's paper reports MiB and
PLOP on 11-5, 11-1 and 1-1 (final mIoU over the 19 classes); GSC reports no Cityscapes run.
Class-incremental Cityscapes is not offered: its train id 0 is "road", so there is no
background class to carry the background shift.
"""

from configs import common


def get_config(arg: str = "11-5"):
  task, _ = common.parse_arg(arg)
  config = common.get_base_config("cityscapes", task)
  config.data.root = "data/cityscapes"
  config.data.num_classes = 19
  config.optim.batch_size = 12
  config.data.eval_batch_size = 12
  config.optim.epochs_step0 = 50
  return common.finalize(config, arg)

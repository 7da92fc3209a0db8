"""ADE20K (SceneParsing, ADEChallengeData2016: 20,210 training / 2,000 validation images).

Run (the tree expected under data.root is in the README):

  python -m gsc_jax.main --config=configs/ade.py:100-50,data.root=/data/ADEChallengeData2016
  python -m gsc_jax.main --config=configs/ade.py:100-10,method=plop,data.root=...
  python -m gsc_jax.main --config=configs/ade.py:100-10,method=gsc,data.root=...
  python -m gsc_jax.main --config=configs/ade.py:offline,method=ft,data.root=...   # joint

Tasks: 100-50, 100-10, 100-5, 50-50 (alias 50), offline; 151 label ids, 0 = "other".
Class 0 is scored as a class at evaluation (PLOP's protocol, the default); MiB's protocol
ignores it: ``data.eval_ignore_background=true``. Every result states which was used.

Published protocol (docs/algorithm.md 1.6): as VOC (ResNet-101 OS16, batch 24, crop 512, lr
0.01 / 0.001) with 60 epochs per step. Local POD for PLOP and GSC on ADE (PLOP's
scripts/ade): features 0.001, logits 0.00001 (PUBLISHED in gsc_jax/methods/plop.py).

Published numbers to expect (final old/new/all mIoU %, docs/algorithm.md 6):
  100-50: GSC 42.4/19.2/34.7    100-10: GSC 40.8/17.6/33.1    joint training: 38.9
MiB's and PLOP's ADE numbers are in their papers' tables (not restated here).
"""

from configs import common


def get_config(arg: str = "100-50"):
  task, _ = common.parse_arg(arg)
  config = common.get_base_config("ade", task)
  config.data.root = "data/ADEChallengeData2016"
  config.data.num_classes = 151
  config.data.eval_ignore_background = False  # PLOP: class 0 scored; MiB: true
  config.optim.epochs_step0 = 60
  return common.finalize(config, arg)

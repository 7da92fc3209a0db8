"""Builds the Pascal VOC "aug" layout (SegmentationClassAug + train_aug.txt) from the
original VOC 2012 and SBD releases.

  python -m gsc_jax.tools.build_voc_aug --voc=/path/VOCdevkit/VOC2012 \\
      --sbd=/path/benchmark_RELEASE --out=/path/VOC2012

Inputs:
  --voc  VOC 2012: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNGs whose
         indices are the class ids, 255 = void borders), ImageSets/Segmentation/train.txt
         and val.txt
  --sbd  SBD benchmark_RELEASE: dataset/cls/<id>.mat (struct GTcls, field Segmentation: a
         class-id map without void), dataset/train.txt and dataset/val.txt

Output under --out (may be --voc):
  SegmentationClassAug/<id>.png            8-bit 'L' class ids, 255 = void, for every id of
                                           train_aug and val (existing files are overwritten)
  ImageSets/Segmentation/train_aug.txt     sorted((VOC train | SBD train | SBD val) - VOC val)
  ImageSets/Segmentation/val.txt           VOC val
  JPEGImages                               a symlink to --voc's JPEGImages when out != voc

The label of an id is the VOC SegmentationClass PNG when there is one (its void borders
kept), otherwise the SBD .mat.
"""

import os
import time

import numpy as np
import scipy.io
from absl import app
from absl import flags
from PIL import Image

from gsc_jax.data import files
from gsc_jax.data import voc
from gsc_jax import errors

VOC_NUM_CLASSES = 21
# The split sizes of the published SegmentationClassAug (MiB, PLOP, ...).
PUBLISHED_COUNTS = {"train_aug": 10582, "val": 1449}
PROGRESS_EVERY = 500

_VOC = flags.DEFINE_string("voc", None, "VOC 2012 root (VOCdevkit/VOC2012)")
_SBD = flags.DEFINE_string("sbd", None, "SBD root (benchmark_RELEASE)")
_OUT = flags.DEFINE_string("out", None, "output root; may be the same as --voc")


def _require_input(path: str, what: str, directory: bool = False) -> None:
  """FileNotFoundError naming the missing input file (or ``directory``) ``path``; ``what``
  says what it is."""
  if not (os.path.isdir(path) if directory else os.path.isfile(path)):
    raise errors.MissingFileError(f"{what} not found: {path!r}; check --voc / --sbd point to the "
                            "extracted VOC 2012 and SBD (benchmark_RELEASE) releases")


def read_id_list(path: str) -> list[str]:
  """The image ids of a list file, one per non-blank line, in file order."""
  _require_input(path, "id list")
  with open(path) as list_file:
    ids = [line.strip() for line in list_file if line.strip()]
  if not ids:
    raise errors.InputError(f"id list {path!r} is empty; re-extract the release it belongs to")
  return ids


def read_sbd_label(path: str) -> np.ndarray:
  """uint8 [H, W] class ids of an SBD ``cls/<id>.mat`` (GTcls.Segmentation)."""
  try:
    segmentation = scipy.io.loadmat(
        path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
  except (OSError, ValueError, KeyError, AttributeError, TypeError,
          scipy.io.matlab.MatReadError) as error:
    raise errors.InputError(f"cannot read the GTcls.Segmentation of SBD label {path!r} ({error}); "
                     "the file is corrupt or not an SBD cls .mat: re-extract it") from error
  segmentation = np.asarray(segmentation)
  if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype, np.integer):
    raise errors.InputError(f"SBD label {path!r}: GTcls.Segmentation is {segmentation.dtype} "
                     f"{list(segmentation.shape)}, expected a 2-D integer class-id map")
  if segmentation.min() < 0 or segmentation.max() > 255:
    raise errors.InputError(f"SBD label {path!r} has values outside 0..255 "
                     f"({segmentation.min()}..{segmentation.max()}); expected class ids")
  return segmentation.astype(np.uint8)


def _link_images(voc_root: str, out_root: str) -> None:
  """Makes out_root/JPEGImages a symlink to voc_root/JPEGImages (kept if already so)."""
  target = os.path.abspath(os.path.join(voc_root, voc.IMAGE_DIR))
  link = os.path.join(out_root, voc.IMAGE_DIR)
  if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(target):
    print(f"{link} already links to {target}", flush=True)
    return
  if os.path.lexists(link):
    raise FileExistsError(f"{link!r} exists and is not a link to {target!r}; remove it "
                          "(the images are linked from --voc) or pass the VOC root as --out")
  os.symlink(target, link)
  print(f"Linked {link} -> {target} (the images are not copied)", flush=True)


def build(voc_root: str, sbd_root: str, out_root: str) -> dict:
  """Writes SegmentationClassAug, train_aug.txt, val.txt (and the JPEGImages link when
  out_root is not voc_root) under ``out_root``; returns the counts: "train_aug", "val",
  "labels" (files written), "labels_from_voc" and "labels_from_sbd"."""
  start = time.time()
  _require_input(voc_root, "VOC 2012 root", directory=True)
  _require_input(sbd_root, "SBD root", directory=True)
  voc_list_dir = os.path.join(voc_root, voc.LIST_DIR)
  voc_train = read_id_list(os.path.join(voc_list_dir, "train.txt"))
  voc_val = read_id_list(os.path.join(voc_list_dir, "val.txt"))
  sbd_train = read_id_list(os.path.join(sbd_root, "dataset", "train.txt"))
  sbd_val = read_id_list(os.path.join(sbd_root, "dataset", "val.txt"))
  voc_image_dir = os.path.join(voc_root, voc.IMAGE_DIR)
  voc_label_dir = os.path.join(voc_root, "SegmentationClass")
  sbd_label_dir = os.path.join(sbd_root, "dataset", "cls")
  _require_input(voc_image_dir, "VOC 2012 JPEGImages directory", directory=True)
  _require_input(voc_label_dir, "VOC 2012 SegmentationClass directory", directory=True)
  _require_input(sbd_label_dir, "SBD dataset/cls directory", directory=True)

  train_aug = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))
  all_ids = sorted(set(train_aug) | set(voc_val))
  print(f"VOC train {len(voc_train)}, VOC val {len(voc_val)}, SBD train {len(sbd_train)}, "
        f"SBD val {len(sbd_val)} -> train_aug {len(train_aug)}, val {len(voc_val)}; writing "
        f"{len(all_ids)} labels", flush=True)

  out_label_dir = os.path.join(out_root, voc.LABEL_DIR)
  out_list_dir = os.path.join(out_root, voc.LIST_DIR)
  os.makedirs(out_label_dir, exist_ok=True)
  os.makedirs(out_list_dir, exist_ok=True)
  labels_from_voc = labels_from_sbd = 0
  for done, image_id in enumerate(all_ids, start=1):
    image_path = os.path.join(voc_image_dir, image_id + ".jpg")
    _require_input(image_path, f"JPEG of image {image_id!r}")
    voc_label_path = os.path.join(voc_label_dir, image_id + ".png")
    sbd_label_path = os.path.join(sbd_label_dir, image_id + ".mat")
    if os.path.isfile(voc_label_path):
      label_path, label = voc_label_path, files.decode_label(voc_label_path)
      labels_from_voc += 1
    elif os.path.isfile(sbd_label_path):
      label_path, label = sbd_label_path, read_sbd_label(sbd_label_path)
      labels_from_sbd += 1
    else:
      raise errors.MissingFileError(
          f"no label for image {image_id!r}: neither {voc_label_path!r} nor "
          f"{sbd_label_path!r} exists; re-extract VOC 2012 and SBD")
    files.check_label_range(label, VOC_NUM_CLASSES, label_path)
    files.check_same_size(files.image_size(image_path), label, image_path, label_path)
    Image.fromarray(label).save(os.path.join(out_label_dir, image_id + ".png"))
    if done % PROGRESS_EVERY == 0 or done == len(all_ids):
      print(f"  {done}/{len(all_ids)} labels ({labels_from_voc} from VOC PNGs, "
            f"{labels_from_sbd} from SBD .mat; {time.time() - start:.0f} s)", flush=True)

  for list_name, ids in (("train_aug.txt", train_aug), ("val.txt", voc_val)):
    with open(os.path.join(out_list_dir, list_name), "w") as list_file:
      list_file.writelines(image_id + "\n" for image_id in ids)
  if os.path.realpath(out_root) != os.path.realpath(voc_root):
    _link_images(voc_root, out_root)

  counts = {"train_aug": len(train_aug), "val": len(voc_val), "labels": len(all_ids),
            "labels_from_voc": labels_from_voc, "labels_from_sbd": labels_from_sbd}
  print(f"Wrote {out_label_dir} ({counts['labels']} PNGs: {labels_from_voc} from VOC, "
        f"{labels_from_sbd} from SBD) and {out_list_dir}: train_aug {counts['train_aug']} "
        f"ids (published {PUBLISHED_COUNTS['train_aug']}), val {counts['val']} ids "
        f"(published {PUBLISHED_COUNTS['val']}); {time.time() - start:.0f} s", flush=True)
  for split, published in PUBLISHED_COUNTS.items():
    if counts[split] != published:
      print(f"WARNING: {split} has {counts[split]} ids but the published "
            f"SegmentationClassAug has {published}; check that --voc and --sbd are the "
            "complete VOC 2012 and SBD releases, or results will not be comparable",
            flush=True)
  return counts


def main(argv) -> None:
  """Runs ``build`` on the --voc, --sbd and --out flags."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  build(_VOC.value, _SBD.value, _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["voc", "sbd", "out"])
  app.run(main)

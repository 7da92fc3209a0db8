"""Writes the embedded synthetic dataset to disk in the Pascal VOC layout.

  python -m gsc_jax.tools.write_synthetic_voc --out=/tmp/synthvoc --num_train=2000 \\
      --num_val=300

writes --out/JPEGImages/<name>.jpg, --out/SegmentationClassAug/<name>.png and
--out/ImageSets/Segmentation/{train_aug,val}.txt with gsc_jax.data.synthetic's
``write_voc_layout``, so that the real-file path (data.root=--out with configs/voc.py) can
be exercised without a download.
"""

import argparse
import os
import sys

from gsc_jax.data import synthetic


def main(argv=None) -> None:
  """Parses ``argv`` (sys.argv[1:] when None) and writes the dataset."""
  parser = argparse.ArgumentParser(
      prog="python -m gsc_jax.tools.write_synthetic_voc",
      description="Write the synthetic segmentation dataset in the Pascal VOC layout.")
  parser.add_argument("--out", required=True, help="output root directory")
  parser.add_argument("--num_train", type=int, default=2000)
  parser.add_argument("--num_val", type=int, default=300)
  parser.add_argument("--num_classes", type=int, default=21)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  print(f"Writing {args.num_train} train + {args.num_val} val synthetic images "
        f"({args.num_classes} classes, {args.image_size} px, seed {args.seed}) to {args.out}")
  synthetic.write_voc_layout(args.out, args.num_train, args.num_val, args.num_classes,
                             args.image_size, args.seed)
  print(f"Wrote {os.path.join(args.out, 'JPEGImages')} (*.jpg), "
        f"{os.path.join(args.out, 'SegmentationClassAug')} (*.png), "
        f"{os.path.join(args.out, 'ImageSets', 'Segmentation')} (train_aug.txt, val.txt)")


if __name__ == "__main__":
  main(sys.argv[1:])

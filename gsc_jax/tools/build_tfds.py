"""Builds a segmentation dataset into tfds ArrayRecord files (no TensorFlow needed).

  python -m gsc_jax.tools.build_tfds --dataset=voc --root=/data/VOC2012 \\
      --data_dir=/data/tfds

reads the dataset tree under --root with the file source of gsc_jax (nothing is
downloaded), writes <data_dir>/<tfds name>/1.0.0/ and prints the split sizes. Copy that
directory to a bucket to train from it (docs/tfds.md). A dataset already built there is
left as it is: delete its directory to rebuild it.
"""

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from gsc_jax.tfds_builders import builders



def build(dataset: str, root: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builds ``dataset`` from the tree ``root`` into ``data_dir``; returns the builder."""
  builder = builders.BUILDERS[dataset](root=root, data_dir=data_dir)
  if builder.is_prepared():
    print(f"{builder.name} {builder.version} is already built at {builder.data_dir}; "
          "delete that directory to rebuild it", flush=True)
  else:
    print(f"Building {builder.name} {builder.version} from {root} into {builder.data_dir}",
          flush=True)
    builder.download_and_prepare()
  return builder


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  tfds.disable_progress_bar()  # the builders print their own progress
  options = flags.FLAGS
  builder = build(options.dataset, options.root, options.data_dir)
  print(f"Output: {builder.data_dir}")
  for split, split_info in builder.info.splits.items():
    print(f"  {split}: {split_info.num_examples} examples ({split_info.num_bytes})")
  print(f"Train from it with data.source=tfds data.tfds_dir={options.data_dir}")


if __name__ == "__main__":
  # Flags are defined only when this module is the program, so importing it adds none.
  flags.DEFINE_enum("dataset", None, list(builders.BUILDERS), "the dataset to build")
  flags.DEFINE_string("root", None, "the dataset tree (what data.root names when training "
                      "from files)")
  flags.DEFINE_string("data_dir", None, "the tfds data directory to write to")
  flags.mark_flags_as_required(["dataset", "root", "data_dir"])
  app.run(main)

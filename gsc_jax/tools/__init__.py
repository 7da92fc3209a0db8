"""Command-line tools of gsc_jax, one module per command (``python -m gsc_jax.tools.<name>``).

The library code they call stays in gsc_jax.data, gsc_jax.models and gsc_jax.tfds_builders;
training itself is ``python -m gsc_jax.main`` (README).

  build_voc_aug        builds SegmentationClassAug, train_aug.txt and val.txt from the
                       original VOC 2012 and SBD releases:
      python -m gsc_jax.tools.build_voc_aug --voc=/data/VOCdevkit/VOC2012 \\
          --sbd=/data/benchmark_RELEASE --out=/data/VOC2012
  check_voc_counts     compares a VOC tree's per-step training image counts with the
                       published ones (exit 0 when every count matches):
      python -m gsc_jax.tools.check_voc_counts --root=/data/VOC2012
  write_synthetic_voc  writes the embedded synthetic dataset to disk in the VOC layout:
      python -m gsc_jax.tools.write_synthetic_voc --out=/tmp/synthvoc
  convert_backbone     converts an ImageNet PyTorch ResNet checkpoint (iabn or torchvision)
                       into the backbone .npz that model.pretrained names:
      python -m gsc_jax.tools.convert_backbone --format=iabn \\
          --input=resnet101_iabn_sync.pth.tar --output=pretrained/resnet101_iabn.npz
  build_tfds           builds a dataset tree into tfds ArrayRecord files (docs/tfds.md):
      python -m gsc_jax.tools.build_tfds --dataset=voc --root=/data/VOC2012 \\
          --data_dir=/data/tfds
  benchmark            runs a benchmark grid and writes its table (docs/benchmark.md):
      python -m gsc_jax.tools.benchmark --benchmark=configs/synthetic_benchmark.py \\
          --workdir=runs/benchmark
  performance          measures train and eval steps, compile and init time, the input
                       pipeline, memory, each method's step relative to fine-tuning and
                       a PyTorch reference step (docs/performance.md):
      python -m gsc_jax.tools.performance --config=configs/synthetic.py:15-1
  compare_reference    trains MiB or PLOP with their released code (imported from a
                       checkout, run by reference_driver.py in an interpreter with torch)
                       and with gsc_jax on one tree, and compares them step by step
                       (docs/reference_comparison.md):
      python -m gsc_jax.tools.compare_reference --method=mib --reference_code=/src/MiB \\
          --reference_python=/venvs/reference/bin/python --out=runs/compare_mib
"""

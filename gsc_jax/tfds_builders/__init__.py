"""TFDS builders that pack the segmentation datasets into ArrayRecord files.

Importing this package registers the builders ``voc_aug``, ``ade20k`` and ``cityscapes``
with tfds. Build with ``python -m gsc_jax.tools.build_tfds`` (docs/tfds.md); read with
``gsc_jax.data.tfds_source.TFDSSegmentation``. Neither needs TensorFlow.
"""

from gsc_jax.tfds_builders.builders import BUILDERS
from gsc_jax.tfds_builders.builders import Ade20k
from gsc_jax.tfds_builders.builders import Cityscapes
from gsc_jax.tfds_builders.builders import SegmentationBuilder
from gsc_jax.tfds_builders.builders import VocAug
__all__ = ["BUILDERS", "Ade20k", "Cityscapes", "SegmentationBuilder", "VocAug"]

"""Converts an ImageNet-pretrained PyTorch ResNet checkpoint into a gsc_jax backbone file.

  python -m gsc_jax.tools.convert_backbone --format=iabn \\
      --input=resnet101_iabn_sync.pth.tar --backbone=resnet101 \\
      --output=pretrained/resnet101_iabn.npz

--format is "iabn" (the in-place-ABN ResNet of MiB and PLOP) or "torchvision"; the mapping
and the checks are those of gsc_jax.models.convert. PyTorch is needed only here, to read
the .pth file (pip install torch). Writes --output (an .npz of "params/..." and
"batch_stats/..." arrays with JSON metadata) and prints the config flags that use it.
"""

from absl import app
from absl import flags
import jax

from gsc_jax.models import convert
from gsc_jax.models import resnet


def _define_flags() -> None:
  """The command-line flags, defined only when this module is the program (importing it
  adds no flags)."""
  flags.DEFINE_enum("format", None, sorted(convert.FORMATS), "checkpoint family")
  flags.DEFINE_string("input", None, "PyTorch checkpoint (.pth, .pth.tar, .pt) or .npz")
  flags.DEFINE_string("backbone", "resnet101", f"one of {sorted(resnet.BACKBONES)}")
  flags.DEFINE_string("output", None, "converted .npz to write")
  flags.mark_flags_as_required(["format", "input", "output"])


def main(argv) -> None:
  """Converts --input, writes --output and prints a summary with the config to use it."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = flags.FLAGS
  variables, metadata = convert.convert_checkpoint(options.input, options.format,
                                                   options.backbone)
  convert.save_backbone(options.output, variables, metadata)

  leaves = jax.tree.leaves(variables)
  parameters = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
  config_line = f"--config.model.pretrained={options.output}"
  if metadata["activation"] != "leaky_relu":
    config_line += f" --config.model.activation={metadata['activation']}"
  print(f"converted {len(leaves)} tensors ({parameters:,} parameters) of {options.backbone} "
        f"from {options.input} ({options.format}) to {options.output}\n"
        f"use it with: {config_line}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)

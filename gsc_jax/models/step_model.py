"""The model of one incremental step: its DeepLabV3, its starting variables, its export
metadata.

Step 0 starts from a fresh initialisation (with an ImageNet backbone when
``model.pretrained`` is set); step t > 0 from step t-1's export, grown by the new step's
classifier (docs/algorithm.md 1.5), or the export itself on a domain-incremental step,
which adds no class.
"""

import jax
import jax.numpy as jnp

from gsc_jax import errors
from gsc_jax import mesh as mesh_lib
from gsc_jax.models import convert
from gsc_jax.models import deeplab
from gsc_jax.models import incremental


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The dtype ``model.compute_dtype`` names (docs/precision_and_accumulation.md)."""
  name = config.model.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise errors.InputError(f"unknown model.compute_dtype {name!r}; valid: "
                            f"{', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def make_model(config, classifier_sizes) -> deeplab.DeepLabV3:
  """The DeepLabV3 with one classifier per entry of ``classifier_sizes``, computing in
  ``model.compute_dtype`` (the teacher, built here too, computes in the same dtype)."""
  return deeplab.DeepLabV3(
      classes_per_step=tuple(classifier_sizes), backbone=config.model.backbone,
      output_stride=config.model.output_stride, head_channels=config.model.head_channels,
      activation=config.model.activation, dtype=compute_dtype(config))


def abstract_variables(model, mesh):
  """The model's variables as abstract arrays replicated over the mesh (restore targets)."""
  return mesh_lib.replicated_shapes(incremental.variable_shapes(model), mesh)


def initial_variables(config, facts, model, teacher_variables, mesh, log):
  """The variables step ``facts.step`` starts from, replicated over the mesh (module
  docstring); ``log`` reports where a pretrained backbone came from."""
  rng = jax.random.fold_in(jax.random.key(config.seed), facts.step)
  replicated = mesh_lib.replicated(mesh)
  if not facts.has_teacher:
    variables = incremental.init_variables(model, rng, out_shardings=replicated)
  elif not facts.classes:  # a domain-incremental step: the teacher's variables as they are
    variables = jax.jit(lambda teacher: teacher, out_shardings=replicated)(teacher_variables)
  else:
    variables = jax.jit(lambda teacher, rng: incremental.grow_variables(
        model, teacher, rng, facts.step, init=config.model.new_classifier_init),
                        out_shardings=replicated)(teacher_variables, rng)
  if not facts.has_teacher and config.model.pretrained:
    backbone = convert.pretrained_backbone_variables(
        config.model.pretrained, config.model.backbone, config.model.activation)
    variables = mesh_lib.replicate(incremental.transfer_variables(
        {"params": {"backbone": backbone["params"]},
         "batch_stats": {"backbone": backbone["batch_stats"]}}, variables), mesh)
    log(f"step 0: backbone initialised from {config.model.pretrained}")
  return variables


def export_meta(config, task, step: int) -> dict:
  """What an export records about the model it holds (checked when a run reuses it)."""
  model = config.model
  return {"step": step, "dataset": config.dataset,
          "classes_per_step": [list(c) for c in task.steps[:step + 1]],
          "model": {"backbone": model.backbone, "output_stride": model.output_stride,
                    "head_channels": model.head_channels, "activation": model.activation},
          "void_to_background": config.data.void_to_background}

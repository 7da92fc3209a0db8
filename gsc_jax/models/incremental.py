"""Growing a DeepLabV3 from one incremental step to the next (ALGORITHM.md 1.5).

At step t the model gains ``classifier_t``; every other variable (backbone, head, the
classifiers of steps 0..t-1, and their batch statistics) keeps its name and shape, so the
new model's variables are: the previous step's values wherever a path exists in both, and
a fresh initialisation only for the new classifier. The new classifier is then either left
random or initialised as in MiB ("init_balanced").

Every function is pure: it returns new pytrees and never modifies its inputs.
"""

import math

import flax
import jax.numpy as jnp
from flax import traverse_util

from gsc_jax import errors


def _flatten(tree) -> dict:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _path_name(path) -> str:
  return "/".join(str(key) for key in path)


def transfer_variables(old_variables, new_variables):
  """Returns ``new_variables`` with every leaf that also exists in ``old_variables`` (same
  path) replaced by the old value.

  Leaves only in ``new_variables`` (the new step's classifier) keep their fresh
  initialisation; leaves only in ``old_variables`` are dropped. A path present in both with
  a different shape raises ValueError naming the path: it means the two models are not the
  same network (other backbone, head width, or classes of a step). Works on whole
  ``{'params', 'batch_stats'}`` dicts or on a single collection.
  """
  old_leaves = _flatten(old_variables)
  merged = {}
  for path, new_value in _flatten(new_variables).items():
    if path not in old_leaves:
      merged[path] = new_value
      continue
    old_value = old_leaves[path]
    if jnp.shape(old_value) != jnp.shape(new_value):
      raise errors.InputError(f"cannot transfer {_path_name(path)}: old shape {jnp.shape(old_value)}"
                       f" != new shape {jnp.shape(new_value)}")
    merged[path] = old_value
  return traverse_util.unflatten_dict(merged)


def init_new_classifier_mib(params, step: int):
  """MiB's "init_balanced" for the classifier of ``step`` (> 0); returns new params.

  With N the number of channels of ``classifier_{step}``, ``b0`` the background bias
  (``classifier_0`` bias[0]) and ``w0`` the background kernel (``classifier_0``
  kernel[..., 0]): every channel of ``classifier_{step}`` gets kernel ``w0`` and bias
  ``b0 - log(N + 1)``, and the background bias also becomes ``b0 - log(N + 1)``.

  Why: the background of step t-1 contains the new classes (background shift). After this
  init, background and the N new classes each get exactly 1/(N+1) of the old background
  probability, while every old class keeps its probability, so the grown model starts with
  the old model's predictions.
  """
  if step < 1:
    raise errors.InputError(f"the MiB init applies to a new step's classifier (step >= 1), got {step}")
  new_name = f"classifier_{step}"
  if new_name not in params or "classifier_0" not in params:
    raise errors.InputError(f"params need classifier_0 and {new_name}; have {sorted(params)}")

  background = params["classifier_0"]
  new_kernel = params[new_name]["kernel"]
  num_new = new_kernel.shape[-1]
  background_kernel = background["kernel"][..., :1]  # keep the channel axis
  balanced_bias = background["bias"][0] - math.log(num_new + 1)

  new_params = dict(flax.core.unfreeze(params))
  new_params[new_name] = {
      "kernel": jnp.broadcast_to(background_kernel, new_kernel.shape).astype(new_kernel.dtype),
      "bias": jnp.full(params[new_name]["bias"].shape, balanced_bias,
                       params[new_name]["bias"].dtype),
  }
  new_params["classifier_0"] = {
      **background, "bias": jnp.asarray(background["bias"]).at[0].set(balanced_bias)}
  return new_params


NEW_CLASSIFIER_INITS = ("mib", "random")


def grow_variables(model_for_new_step, old_variables, rng, image_size, step: int,
                   init: str = "mib"):
  """Variables of the step-``step`` model, grown from the previous step's variables.

  Initialises ``model_for_new_step`` on a dummy batch of ``image_size`` (an int, or a
  (height, width) pair), copies every shared variable from ``old_variables``
  (``transfer_variables``) and initialises ``classifier_{step}`` per ``init``: "mib" (see
  ``init_new_classifier_mib``) or "random" (the fresh initialisation is kept).
  """
  if init not in NEW_CLASSIFIER_INITS:
    raise errors.InputError(f"unknown new-classifier init {init!r}; valid: {NEW_CLASSIFIER_INITS}")
  height, width = (image_size, image_size) if jnp.ndim(image_size) == 0 else image_size
  images = jnp.zeros((1, height, width, 3), jnp.float32)
  fresh_variables = model_for_new_step.init(rng, images, train=False)

  new_classifier = f"classifier_{step}"
  if new_classifier not in fresh_variables["params"]:
    raise errors.InputError(f"the new model has no {new_classifier}")
  if new_classifier in flax.core.unfreeze(old_variables)["params"]:
    raise errors.InputError(f"the old variables already contain {new_classifier}")

  variables = transfer_variables(old_variables, fresh_variables)
  if init == "mib":
    variables = {**variables, "params": init_new_classifier_mib(variables["params"], step)}
  return variables

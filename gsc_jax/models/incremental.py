"""Growing a DeepLabV3 from one incremental step to the next (docs/algorithm.md 1.5).

At step t the model gains ``classifier_t``; every other variable (backbone, head, the
classifiers of steps 0..t-1, and their batch statistics) keeps its name and shape, so the
new model's variables are: the previous step's values wherever a path exists in both, and
a fresh initialisation only for the new classifier. The new classifier is then either left
random or initialised as in MiB ("init_balanced").

Every function is pure: it returns new pytrees and never modifies its inputs.

Start-up cost. Parameter initialisation does not depend on the input's spatial size, and
under ``jax.jit`` the forward pass of ``model.init`` is dead code that JAX removes before
XLA sees it: the whole cost of a jitted init is compiling the random-number program (one
threefry chain per leaf, ~30k HLO instructions for ResNet-50) with LLVM. ``init_variables``
therefore jits the init on a 1-image dummy of the smallest useful size and, on CPU, compiles
it at LLVM optimisation level 1 (about half the compile time; the values are bitwise those
of the default level, checked by tests/test_startup.py). ``grow_variables`` needs no
initialisation at all with the MiB init (the new classifier is overwritten) and, with the
random init, compiles only the new classifier's random numbers.

Note: the values are those of the JITTED ``model.init``. An eager (un-jitted)
``model.init`` evaluates the same initialisers op by op and differs in the last bit of
some kernels (XLA fuses the ``normal * stddev`` product differently).
"""

import math

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util

from gsc_jax import errors


def _flatten(tree) -> dict:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _path_name(path) -> str:
  return "/".join(str(key) for key in path)


def _shape(value) -> tuple:
  """Shape of an array, a ``jax.ShapeDtypeStruct`` or a Python/NumPy scalar."""
  return tuple(value.shape) if hasattr(value, "shape") else jnp.shape(value)


# --- fast initialisation ---------------------------------------------------------------------

# XLA:CPU compile options for the initialisation program: LLVM -O1 instead of -O3. The
# program is integer hashing plus a few float ops per element and runs once; -O1 roughly
# halves its compile time and gives the same bits (tests/test_startup.py). Level 0 does
# NOT: it changes the last bit of some kernels (no FMA formation), so don't go lower.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_images_shape(model) -> tuple:
  """The dummy input ``init_variables`` initialises ``model`` on: one image whose sides
  equal the model's output stride (feature map 1x1), or 16 for a model without one.

  Any size gives the same variables (none depends on the spatial size); this one keeps an
  eager or abstract trace of the forward cheap.
  """
  size = int(getattr(model, "output_stride", 16))
  return (1, size, size, 3)


def _init_images(model):
  return jnp.zeros(init_images_shape(model), jnp.float32)


def init_compiler_options(platform: str | None = None) -> dict:
  """The XLA compile options ``init_variables`` uses on ``platform`` (default: JAX's
  default backend): ``CPU_INIT_COMPILER_OPTIONS`` on CPU, none elsewhere."""
  platform = jax.default_backend() if platform is None else platform
  return dict(CPU_INIT_COMPILER_OPTIONS) if platform == "cpu" else {}


def _inside_transformation() -> bool:
  """Whether JAX is tracing (jit, eval_shape, grad...): a nested ``jax.jit`` may not carry
  compile options there. True when this JAX version cannot tell."""
  try:
    from jax._src import core  # pylint: disable=import-outside-toplevel
    return not core.trace_state_clean()
  except (ImportError, AttributeError):
    return True


def init_variables(model, rng, out_shardings=None):
  """``model.init(rng, images, train=False)`` under ``jax.jit``, with every leaf bitwise equal
  to ``jax.jit(lambda rng: model.init(rng, jnp.zeros((1, crop, crop, 3)), train=False))(rng)``
  for any crop size, in about half the time on CPU (module docstring).

  ``out_shardings`` is passed to ``jax.jit`` (e.g. a replicated ``NamedSharding``). Called
  under an outer ``jax.jit`` it traces into that program (the compile options then are the
  outer program's).
  """
  images = _init_images(model)
  compiler_options = None
  if not _inside_transformation():
    platform = None
    leaves = jax.tree.leaves(out_shardings)
    device_set = getattr(leaves[0], "device_set", None) if leaves else None
    if device_set:
      platform = next(iter(device_set)).platform
    compiler_options = init_compiler_options(platform) or None
  init_fn = jax.jit(lambda rng: model.init(rng, images, train=False),
                    out_shardings=out_shardings, compiler_options=compiler_options)
  return init_fn(rng)


def variable_shapes(model):
  """The shapes and dtypes of ``model``'s variables (``jax.ShapeDtypeStruct`` leaves), by
  tracing its init on the small dummy input; nothing is computed or compiled."""
  images = jax.ShapeDtypeStruct(init_images_shape(model), jnp.float32)
  return jax.eval_shape(lambda images: model.init(jax.random.key(0), images, train=False),
                        images)


def transfer_variables(old_variables, new_variables):
  """Returns ``new_variables`` with every leaf that also exists in ``old_variables`` (same
  path) replaced by the old value.

  Leaves only in ``new_variables`` (the new step's classifier) keep their fresh
  initialisation; leaves only in ``old_variables`` are dropped. A path present in both with
  a different shape raises ValueError naming the path: it means the two models are not the
  same network (other backbone, head width, or classes of a step). Works on whole
  ``{'params', 'batch_stats'}`` dicts or on a single collection. ``new_variables`` may hold
  ``jax.ShapeDtypeStruct`` leaves where ``old_variables`` has the path (only the shape is
  read there).
  """
  old_leaves = _flatten(old_variables)
  merged = {}
  for path, new_value in _flatten(new_variables).items():
    if path not in old_leaves:
      merged[path] = new_value
      continue
    old_value = old_leaves[path]
    if _shape(old_value) != _shape(new_value):
      raise errors.InputError(f"cannot transfer {_path_name(path)}: old shape {_shape(old_value)}"
                       f" != new shape {_shape(new_value)}")
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


def _init_new_leaves(model, rng, old_paths):
  """``(shapes, fresh)``: the shapes of all of ``model``'s variables, and the values
  ``jax.jit(model.init)`` gives the leaves whose path is not in ``old_paths``, computing only
  those (the rest of the init is dead code in this program). One trace of the model."""
  images = _init_images(model)
  traced = {}

  def init_new(rng):
    variables = model.init(rng, images, train=False)
    traced["shapes"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    variables)
    return {_path_name(path): value for path, value in _flatten(variables).items()
            if path not in old_paths}

  fresh = jax.jit(init_new)(rng)
  shapes = traced["shapes"]
  names = {_path_name(path): path for path in _flatten(shapes)}
  return shapes, {names[name]: value for name, value in fresh.items()}


def grow_variables(model_for_new_step, old_variables, rng, step: int, init: str = "mib"):
  """Variables of the step-``step`` model, grown from the previous step's variables.

  Copies every variable ``model_for_new_step`` shares with ``old_variables``
  (``transfer_variables``) and initialises ``classifier_{step}`` per ``init``: "mib" (see
  ``init_new_classifier_mib``) or "random" (the values ``jax.jit(model_for_new_step.init)``
  gives it for ``rng``; a leaf that is new but not in that classifier gets those too).

  Works eagerly and under ``jax.jit``; the result is bitwise the same either way, and the
  same as a full ``jax.jit(model_for_new_step.init)`` followed by the transfer (checked by
  tests/test_startup.py). Nothing but the new leaves
  is initialised: with "mib" nothing at all (MiB overwrites every value of the classifier),
  with "random" only the new leaves' random numbers are compiled and computed.

  Called eagerly, the shared leaves of the result ARE the arrays of ``old_variables`` (no
  copy): do not donate them while the old variables are still in use. Under ``jax.jit``
  they are copies; pass ``old_variables`` as an argument of the jitted function rather than
  closing over it (measured: 0.2-0.3 s less to compile for ResNet-50/101).
  """
  if init not in NEW_CLASSIFIER_INITS:
    raise errors.InputError(f"unknown new-classifier init {init!r}; valid: {NEW_CLASSIFIER_INITS}")
  new_classifier = f"classifier_{step}"
  if new_classifier in flax.core.unfreeze(old_variables)["params"]:
    raise errors.InputError(f"the old variables already contain {new_classifier}")
  old_paths = set(_flatten(old_variables))

  fresh = {}
  if init == "mib":
    shapes = variable_shapes(model_for_new_step)
    new_paths = [path for path in _flatten(shapes) if path not in old_paths]
    if not all(path[:2] == ("params", new_classifier) for path in new_paths):
      shapes, fresh = _init_new_leaves(model_for_new_step, rng, old_paths)
    # else: MiB replaces every value of the new classifier, its shapes suffice
  else:
    shapes, fresh = _init_new_leaves(model_for_new_step, rng, old_paths)
  if new_classifier not in shapes["params"]:
    raise errors.InputError(f"the new model has no {new_classifier}")
  new_variables = traverse_util.unflatten_dict(
      {path: fresh.get(path, shape) for path, shape in _flatten(shapes).items()})

  variables = transfer_variables(old_variables, new_variables)
  if init == "mib":
    variables = {**variables, "params": init_new_classifier_mib(variables["params"], step)}
  return variables

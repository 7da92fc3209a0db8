"""XLA flags set from Python before JAX starts its backend.

``set_default_cpu_flags()`` adds ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
to ``XLA_FLAGS`` when the process is going to run on CPU. With jaxlib 0.10's defaults XLA:CPU
hands every convolution to its experimental YNNPACK ("YNN") backend, which is slow for this
project's convolutions; the flag removes convolutions from the YNN set (dots and reductions
stay), and XLA's own convolution path roughly halves a CPU train step. The values change
only by float rounding (another summation order).

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend (the first ``jax.devices()``,
array, ``jit`` call ...), not at ``import jax``, so calling this after ``import jax`` and before
any device use works. Call it at the top of an entry point (``main()``).

The flag is added only if all of:

* the process will run on CPU only: ``jax_platforms`` (``JAX_PLATFORMS``, or
  ``jax.config.jax_platforms`` once jax is imported) names only ``cpu``; or it is unset and
  nothing that could give JAX another backend is installed (``accelerator_sources()``: a
  ``jax_plugins`` module or entry point such as ``jax_cuda12_plugin``, a PJRT plugin in
  ``PJRT_NAMES_AND_LIBRARY_PATHS``, ``libtpu`` or ``TPU_LIBRARY_PATH`` or a loadable
  ``libtpu.so``). Any doubt means "not CPU": a GPU/TPU run never sees a CPU-only flag that
  its own XLA might reject as unknown;
* ``XLA_FLAGS`` does not already mention ``xla_cpu_experimental_ynn_fusion_type`` (the
  user's own setting wins);
* JAX's backends are not initialised yet (then the flag could no longer take effect).
"""

import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

CPU_CONV_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_CONV_FLAG = f"--{CPU_CONV_FLAG_NAME}=-individual_convolution"


def requested_platforms() -> list[str] | None:
  """The platforms JAX was told to use (lower case), or None when it chooses itself.

  Once jax is imported its ``jax_platforms`` config is what counts (it read
  ``JAX_PLATFORMS`` at import and may have been updated since); before, the environment.
  """
  value = None
  jax = sys.modules.get("jax")
  config = getattr(jax, "config", None)
  if config is not None:
    try:
      value = config.jax_platforms
    except AttributeError:
      value = os.environ.get("JAX_PLATFORMS")
  else:
    value = os.environ.get("JAX_PLATFORMS")
  if not value:
    return None
  return [name.strip().lower() for name in value.split(",") if name.strip()]


def accelerator_sources() -> list[str]:
  """What is installed that could give JAX a backend other than CPU, found without importing
  or initialising any of it (empty: JAX can only start its CPU backend)."""
  found = []
  spec = importlib.util.find_spec("jax_plugins")  # JAX's namespace package for plugins
  if spec is not None and spec.submodule_search_locations:
    found += [f"jax_plugins.{module.name}"
              for module in pkgutil.iter_modules(list(spec.submodule_search_locations))]
  found += [f"entry point {entry.value}"
            for entry in importlib.metadata.entry_points(group="jax_plugins")]
  if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS"):
    found.append("PJRT_NAMES_AND_LIBRARY_PATHS")
  if os.environ.get("TPU_LIBRARY_PATH"):
    found.append("TPU_LIBRARY_PATH")
  for module in ("libtpu", "libtpu_nightly"):
    if importlib.util.find_spec(module) is not None:
      found.append(module)
  if not found and ctypes.util.find_library("tpu"):  # jax dlopens "libtpu.so" as a fallback
    found.append("libtpu.so")
  return found


def runs_on_cpu_only() -> bool:
  """True when JAX in this process will only ever start its CPU backend (module docstring)."""
  platforms = requested_platforms()
  if platforms is not None:
    return all(name == "cpu" for name in platforms)
  return not accelerator_sources()


def backends_initialized() -> bool:
  """Whether JAX has created its backends (after which ``XLA_FLAGS`` is no longer read).
  False when jax is not imported; True when it cannot tell (an unknown jax version)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return True


def set_default_cpu_flags() -> bool:
  """Appends ``CPU_CONV_FLAG`` to ``XLA_FLAGS`` when the process will run on CPU, the user
  has not set that XLA flag, and JAX's backend has not started (module docstring).

  Returns whether it added the flag. Idempotent: a second call finds the flag and returns
  False.
  """
  current = os.environ.get("XLA_FLAGS", "")
  if CPU_CONV_FLAG_NAME in current:
    return False
  if backends_initialized() or not runs_on_cpu_only():
    return False
  os.environ["XLA_FLAGS"] = f"{current} {CPU_CONV_FLAG}".strip()
  return True

"""Start-up cost: the fast model initialisation and the CPU convolution flag.

``incremental.init_variables`` / ``grow_variables`` must give exactly (bit for bit) the
variables the driver got from ``jax.jit(model.init)`` on a crop-sized dummy batch;
``platform_flags.set_default_cpu_flags`` must add its XLA flag only where it is safe and
where it still takes effect. The flag tests run in subprocesses with a controlled
environment (XLA reads ``XLA_FLAGS`` once per process).
"""

import json
import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from gsc_jax import platform_flags
from tests import conftest
from gsc_jax.models import deeplab
from gsc_jax.models import incremental

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = 16
CROP = 128  # the synthetic demo's crop size


def tiny_model(classes_per_step, output_stride=16):
  return deeplab.DeepLabV3(classes_per_step=classes_per_step, backbone="resnet_tiny",
                           output_stride=output_stride, head_channels=HEAD)


def full_size_init(model, rng, crop=CROP):
  """What the driver did: jit(model.init) on a crop-sized dummy batch."""
  images = jnp.zeros((1, crop, crop, 3), jnp.float32)
  return jax.jit(lambda rng: model.init(rng, images, train=False))(rng)


def assert_bitwise_equal(actual, expected):
  """Same tree structure, and every leaf the same shape, dtype and bytes."""
  actual_leaves = flax.traverse_util.flatten_dict(flax.core.unfreeze(actual), sep="/")
  expected_leaves = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep="/")
  assert sorted(actual_leaves) == sorted(expected_leaves)
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for path, expected_value in expected_leaves.items():
    actual_value = np.asarray(actual_leaves[path])
    expected_value = np.asarray(expected_value)
    assert actual_value.shape == expected_value.shape, path
    assert actual_value.dtype == expected_value.dtype, path
    assert actual_value.tobytes() == expected_value.tobytes(), path


# --- init_variables ----------------------------------------------------------------------

OLD_STEPS = (3, 2)
RNG = jax.random.fold_in(jax.random.key(0), 0)


@pytest.fixture(scope="module")
def reference():
  """The driver's variables for the tiny model at the demo's crop size."""
  return full_size_init(tiny_model(OLD_STEPS), RNG)


# Both programs at XLA's default optimisation level (what users run): the tests' level 0
# rounds one initialiser's constant by an ulp differently in the two programs. The two
# tests run together in one fresh process.
AT_DEFAULT_OPTIMIZATION = tuple(f"tests/test_startup.py::{name}" for name in (
    "test_init_variables_bitwise_equal_to_full_size_init",
    "test_init_variables_with_out_shardings_and_under_jit"))


@pytest.mark.slow
def test_init_variables_bitwise_equal_to_full_size_init(request):
  if conftest.rerun_at_default_optimization(AT_DEFAULT_OPTIMIZATION):
    return
  reference = request.getfixturevalue("reference")
  assert_bitwise_equal(incremental.init_variables(tiny_model(OLD_STEPS), RNG), reference)


@pytest.mark.slow
def test_init_variables_with_out_shardings_and_under_jit(request):
  if conftest.rerun_at_default_optimization(AT_DEFAULT_OPTIMIZATION):
    return
  reference = request.getfixturevalue("reference")
  model = tiny_model(OLD_STEPS)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec())
  sharded = incremental.init_variables(model, RNG, out_shardings=sharding)
  assert all(leaf.sharding == sharding for leaf in jax.tree.leaves(sharded))
  assert_bitwise_equal(sharded, reference)
  # Nested in a transformation it drops its compile options and traces into the outer one.
  assert_bitwise_equal(jax.jit(lambda r: incremental.init_variables(model, r))(RNG), reference)
  assert (jax.eval_shape(lambda: incremental.init_variables(model, RNG))
          == jax.eval_shape(lambda: reference))


def test_compile_options_only_on_cpu():
  assert incremental.init_compiler_options("cpu") == incremental.CPU_INIT_COMPILER_OPTIONS
  assert incremental.init_compiler_options("gpu") == {}
  assert incremental.init_compiler_options("tpu") == {}


@pytest.mark.parametrize("output_stride", [16, 8])
def test_variable_shapes_match_full_size_init(output_stride):
  model = tiny_model(OLD_STEPS, output_stride)
  images = jnp.zeros((1, CROP, CROP, 3), jnp.float32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert incremental.variable_shapes(model) == expected
  assert incremental.init_images_shape(model) == (1, output_stride, output_stride, 3)


# --- grow_variables ------------------------------------------------------------------------

NEW_STEPS = (3, 2, 1)
GROW_RNG = jax.random.fold_in(jax.random.key(0), 2)


@pytest.fixture(scope="module")
def old_variables(reference):
  return jax.tree.map(lambda x: x + 0.25, reference)  # not a fresh initialisation


@pytest.fixture(scope="module")
def fresh_new_model(reference):
  """What grow_variables started from before: a full init of the new model."""
  return full_size_init(tiny_model(NEW_STEPS), GROW_RNG, crop=64)


@pytest.mark.parametrize("init", ["mib", "random"])
def test_grow_variables_bitwise_equal_to_full_init(old_variables, fresh_new_model, init):
  expected = incremental.transfer_variables(old_variables, fresh_new_model)
  if init == "mib":
    expected = {**expected,
                "params": incremental.init_new_classifier_mib(expected["params"], 2)}
  model = tiny_model(NEW_STEPS)
  eager = incremental.grow_variables(model, old_variables, GROW_RNG, 2, init=init)
  jitted = jax.jit(lambda old, r: incremental.grow_variables(model, old, r, 2, init=init))(
      old_variables, GROW_RNG)
  assert_bitwise_equal(eager, expected)
  assert_bitwise_equal(jitted, expected)


# --- platform_flags ------------------------------------------------------------------------

def run_python(code, environment=None, unset=("XLA_FLAGS", "JAX_PLATFORMS")):
  """Runs ``code`` in a fresh interpreter (repo on the path) and returns its last stdout
  line parsed as JSON."""
  env = {key: value for key, value in os.environ.items() if key not in unset}
  env.update(environment or {})
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


SET_FLAGS = """
import json, os
from gsc_jax import platform_flags
added = platform_flags.set_default_cpu_flags()
print(json.dumps({"added": added, "xla_flags": os.environ.get("XLA_FLAGS")}))
"""


def test_flag_added_on_cpu():
  result = run_python(SET_FLAGS, {"JAX_PLATFORMS": "cpu"})
  assert result == {"added": True, "xla_flags": platform_flags.CPU_CONV_FLAG}


def test_flag_appended_to_other_user_flags():
  result = run_python(SET_FLAGS, {"JAX_PLATFORMS": "cpu",
                                  "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result == {"added": True, "xla_flags": "--xla_force_host_platform_device_count=2 "
                                                 + platform_flags.CPU_CONV_FLAG}


def test_user_setting_wins():
  own = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  result = run_python(SET_FLAGS, {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": own})
  assert result == {"added": False, "xla_flags": own}


@pytest.mark.parametrize("platforms", ["cuda", "tpu", "gpu", "cpu,cuda", "rocm"])
def test_flag_never_set_for_accelerators(platforms):
  result = run_python(SET_FLAGS, {"JAX_PLATFORMS": platforms, "XLA_FLAGS": "--xla_dump_to=x"})
  assert result == {"added": False, "xla_flags": "--xla_dump_to=x"}
  assert run_python(SET_FLAGS, {"JAX_PLATFORMS": platforms}) == {"added": False,
                                                                 "xla_flags": None}


def test_installed_accelerator_means_not_cpu(tmp_path):
  """With JAX choosing its platform itself, any installed plugin or TPU library keeps the
  flag off (JAX might pick that backend, whose XLA could reject the flag)."""
  plugin_dir = tmp_path / "plugins"
  (plugin_dir / "jax_plugins").mkdir(parents=True)  # namespace package, as jax_cuda12_plugin
  (plugin_dir / "jax_plugins" / "fake_accelerator.py").write_text("def initialize(): pass\n")
  for environment in ({"PYTHONPATH": str(plugin_dir)},
                      {"TPU_LIBRARY_PATH": str(tmp_path / "libtpu.so")},
                      {"PJRT_NAMES_AND_LIBRARY_PATHS": f"fake:{tmp_path / 'fake.so'}"}):
    assert run_python(SET_FLAGS, environment) == {"added": False, "xla_flags": None}
  # The same, seen by the detection itself; JAX_PLATFORMS=cpu still overrides it.
  result = run_python("""
      import json
      from gsc_jax import platform_flags
      print(json.dumps(platform_flags.accelerator_sources()))""",
                      {"PYTHONPATH": str(plugin_dir)})
  assert "jax_plugins.fake_accelerator" in result
  assert run_python(SET_FLAGS, {"PYTHONPATH": str(plugin_dir), "JAX_PLATFORMS": "cpu"})["added"]


def test_without_jax_platforms_follows_what_is_installed():
  result = run_python("""
      import json, os
      from gsc_jax import platform_flags
      sources = platform_flags.accelerator_sources()
      added = platform_flags.set_default_cpu_flags()
      print(json.dumps({"sources": sources, "added": added}))""")
  assert result["added"] == (not result["sources"])


def test_jax_config_platforms_override_environment():
  result = run_python("""
      import json, os
      import jax
      jax.config.update("jax_platforms", "cuda")
      from gsc_jax import platform_flags
      print(json.dumps({"added": platform_flags.set_default_cpu_flags()}))""",
                      {"JAX_PLATFORMS": "cpu"})
  assert result == {"added": False}


def test_no_flag_once_the_backend_is_initialised():
  result = run_python("""
      import json, os
      import jax
      jax.devices()
      from gsc_jax import platform_flags
      added = platform_flags.set_default_cpu_flags()
      print(json.dumps({"added": added, "xla_flags": os.environ.get("XLA_FLAGS")}))""",
                      {"JAX_PLATFORMS": "cpu"})
  assert result == {"added": False, "xla_flags": None}


@pytest.mark.slow
def test_flag_takes_effect_after_import_jax(tmp_path):
  """Set after ``import jax`` but before the first device use, XLA compiles with it: the
  debug options XLA dumps with a compiled module list the YNN fusion types without
  convolutions."""
  code = """
      import glob, json, os, sys
      import jax
      import jax.numpy as jnp
      from gsc_jax import platform_flags
      added = platform_flags.set_default_cpu_flags() if sys.argv[1] == "set" else None
      x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
      jax.jit(lambda x, w: jax.lax.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(
              x, w).compile()
      options = "".join(open(path).read() for path in glob.glob(
          os.path.join(sys.argv[2], "*jit__lambda.debug_options")))
      print(json.dumps({"added": added, "options": options}))"""

  def run(mode, dump_dir):
    env = {key: value for key, value in os.environ.items()
           if key not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_dump_to={dump_dir}",
               PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mode, str(dump_dir)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])

  with_flag = run("set", tmp_path / "with")
  assert with_flag["added"] is True
  fusion_types = [line for line in with_flag["options"].splitlines()
                  if platform_flags.CPU_CONV_FLAG_NAME in line]
  assert fusion_types, with_flag["options"]
  assert not any("CONVOLUTION" in line for line in fusion_types)
  without = run("keep", tmp_path / "without")
  assert without["options"]  # the dump itself worked: XLA_FLAGS was read after import jax
  assert platform_flags.CPU_CONV_FLAG_NAME not in without["options"]

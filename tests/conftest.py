"""Shared test set-up.

* absl flags parsed (grain and absl-based code read them);
* the CPU convolution flag that ``python -m gsc_jax.main`` sets, so that the tests run the
  programs users run (gsc_jax/platform_flags.py; a user's own XLA_FLAGS still win);
* XLA's backend optimisation level 0 (``--xla_backend_optimization_level=0`` in
  ``XLA_FLAGS``, inherited by subprocesses): the same programs, compiled without LLVM's
  optimisations. On these tiny models compilation, not execution, is most of a test's
  time, and this cuts the suite's CPU time by about a third (README, "Tests"). Only float
  rounding changes (no fused multiply-adds, other summation orders); every comparison in
  the suite is between two computations made here, or carries a tolerance;
* one persistent compilation cache for the whole session, in a fresh temporary directory
  (never a user's cache): the same train steps, evaluations and passes are compiled by
  many tests and by the ``python -m gsc_jax.main`` subprocesses they start, which inherit
  it through ``JAX_COMPILATION_CACHE_DIR`` (and its size limit through
  ``JAX_COMPILATION_CACHE_MAX_SIZE``). It is removed at the end of the session.
* the ``slow`` marker (pytest.ini): ``python -m pytest -q -m "not slow" tests`` is the
  quick subset for the edit-test loop (README, "Tests").
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

from absl import flags
import jax

from gsc_jax import compilation_cache
from gsc_jax import platform_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZATION_FLAG = "--xla_backend_optimization_level=0"
AT_DEFAULT_OPTIMIZATION = "GSC_JAX_TESTS_AT_DEFAULT_OPTIMIZATION"  # set: leave the level alone

flags.FLAGS.mark_as_parsed()
if (os.environ.get(AT_DEFAULT_OPTIMIZATION) != "1"
    and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPTIMIZATION_FLAG}".strip()
platform_flags.set_default_cpu_flags()

_CACHE_DIRECTORY = tempfile.mkdtemp(prefix="gsc_jax_test_compilation_cache_")
atexit.register(shutil.rmtree, _CACHE_DIRECTORY, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIRECTORY
# The same size limit in every subprocess, also those that never call
# compilation_cache.enable (``python -c`` scripts): an entry written without it has no
# access-time file, which stops the others' writes (gsc_jax/compilation_cache.py).
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(compilation_cache.MAX_BYTES)
# Programs that compile in well under a second are not worth a file.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
compilation_cache.enable(_CACHE_DIRECTORY)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


_RERUN_RESULTS = {}


def rerun_at_default_optimization(node_ids: tuple[str, ...]) -> bool:
  """For tests whose property holds at XLA's default optimisation level only (two programs
  bitwise equal: level 0 may round their constants differently): runs ``node_ids`` again
  in one fresh pytest process at that level (once per session), asserts that they passed
  there, and returns True; returns False inside that process, where the tests' bodies run."""
  if os.environ.get(AT_DEFAULT_OPTIMIZATION) == "1":
    return False
  if node_ids not in _RERUN_RESULTS:
    xla_flags = " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                         if flag != OPTIMIZATION_FLAG)
    _RERUN_RESULTS[node_ids] = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *node_ids], cwd=REPO,
        env={**os.environ, "XLA_FLAGS": xla_flags, AT_DEFAULT_OPTIMIZATION: "1"},
        capture_output=True, text=True, timeout=600)
  result = _RERUN_RESULTS[node_ids]
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  return True

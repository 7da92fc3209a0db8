"""The persistent compilation cache (gsc_jax/compilation_cache.py): two processes that
compile into one directory at the same moment both work, and a third process reads what
they wrote instead of compiling; ``none`` and a directory that cannot be created turn it
off. Each case runs in a fresh interpreter (the cache is a process-wide JAX setting)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
from gsc_jax import compilation_cache
directory = compilation_cache.enable(sys.argv[1])
import jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even this one
counts = compilation_cache.event_counts()
x = jnp.arange(64.0, dtype=jnp.float32).reshape(8, 8) / 64
value = float(jax.jit(lambda a: jnp.sum(jnp.tanh(a @ a.T + 1.5)))(x))
print(json.dumps({"directory": directory, "value": value,
                  "obtained": compilation_cache.obtained_since(counts)}))
"""


def _start(directory):
  return subprocess.Popen([sys.executable, "-c", SCRIPT, str(directory)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _result(process):
  stdout, stderr = process.communicate(timeout=300)
  process.stderr_text = stderr
  assert process.returncode == 0, stderr[-3000:]
  lines = stdout.strip().splitlines()
  return json.loads(lines[-1]), lines[:-1]


def test_two_processes_share_one_cache_and_a_third_reads_it(tmp_path):
  directory = tmp_path / "cache"
  first, second = [_result(process) for process in (_start(directory), _start(directory))]
  # The same program in the same process-independent setting: the same float bits.
  assert first[0]["value"] == second[0]["value"]
  # Each compiles what the other has not written yet (a few small programs here).
  assert {first[0]["obtained"], second[0]["obtained"]} <= {
      "compiled", "partly read from the compilation cache", "read from the compilation cache"}
  entries = [name for name in os.listdir(directory) if name.endswith("-cache")]
  assert entries  # written; the lock file guards readers against half-written entries
  third, _ = _result(_start(directory))
  assert third["obtained"] == "read from the compilation cache"
  assert third["value"] == first[0]["value"]


def test_none_turns_the_cache_off(tmp_path):
  result, _ = _result(_start("none"))
  assert result["directory"] is None and result["obtained"] == "compiled"


def test_entries_of_a_program_without_a_size_limit_do_not_stop_writes(tmp_path):
  # A JAX program without gsc_jax's size limit (JAX_COMPILATION_CACHE_DIR alone) writes an
  # entry without an access-time file; with the limit on, JAX reads every entry's access
  # time before writing, so without the repair in compilation_cache.enable nothing more is
  # written (JAX warns "Error writing persistent compilation cache entry").
  directory = tmp_path / "cache"
  directory.mkdir()
  foreign = directory / "jit_other-0123456789abcdef-cache"
  foreign.write_bytes(b"an entry of another program")
  process = _start(directory)
  result, _ = _result(process)
  assert result["obtained"] == "compiled"
  assert (directory / "jit_other-0123456789abcdef-atime").exists()
  assert len([name for name in os.listdir(directory) if name.endswith("-cache")]) > 1
  assert "Error writing persistent compilation cache entry" not in process.stderr_text


def test_a_directory_that_cannot_be_created_turns_it_off_with_a_note(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result, notes = _result(_start(blocker / "cache"))
  assert result["directory"] is None and result["obtained"] == "compiled"
  assert any(note.startswith("note: compilation cache off, cannot write to") for note in notes)

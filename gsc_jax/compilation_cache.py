"""The persistent compilation cache: XLA programs compiled once are kept on disk and reused.

A run compiles one train step per incremental step (5-17 s each on a CPU), plus model
initialisation, evaluation and the passes. With the cache on, a repeated or resumed run,
and every later run with the same shapes, reads them back instead (docs/performance.md has
the measured seconds).

Where: ``--compilation_cache=DIR`` (default ``~/.cache/gsc_jax/xla``, or JAX's own
``JAX_COMPILATION_CACHE_DIR`` when that is set); ``--compilation_cache=none`` turns it off.
The flag is defined here, so ``python -m gsc_jax.main`` and every tool that calls
``enable_from_flag`` accept it.

Safety:
* two runs at once on one machine: the cache is given a size limit (``MAX_BYTES``), which
  makes JAX take a file lock (the ``filelock`` package) around every read and write, so a
  run never reads an entry another run is still writing; the least recently used entries
  are removed beyond the limit;
* several hosts: only process 0 writes entries (JAX's rule); every host reads its own
  directory, or a shared one;
* an entry is keyed by the program, the compile options, the XLA flags, the devices and the
  jax/jaxlib version, so a changed program, flag or version never reads a stale entry;
* a damaged entry is reported as a warning by JAX and compiled again;
* a directory shared with other JAX programs: a program that runs without a size limit
  writes entries without the access-time file that the limit's bookkeeping reads, and JAX
  then fails (with a warning) to write any new entry. ``enable`` gives such entries an
  access time when a run starts; entries written by such a program while a run is under
  way are given one by the next run.
"""

import collections
import os
import time

from absl import flags

DEFAULT_DIRECTORY = os.path.join("~", ".cache", "gsc_jax", "xla")
DISABLED = ("", "none", "off")
MAX_BYTES = 4 * 2**30  # the least recently used entries go beyond this
ENTRY_SUFFIX, ACCESS_TIME_SUFFIX = "-cache", "-atime"  # JAX's file names (jax/_src/lru_cache.py)

_EVENTS = collections.Counter()  # JAX's cache events seen in this process, by short name
_LISTENING = []

_FLAG = flags.DEFINE_string(
    "compilation_cache",
    os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_DIRECTORY,
    "Directory of the persistent XLA compilation cache (compiled programs reused across "
    "runs); 'none' turns it off.")


def enable(directory: str | None) -> str | None:
  """Points JAX's persistent compilation cache at ``directory`` (``~`` expanded), or turns
  it off for ``None`` or one of ``DISABLED``. Returns the directory used, or None. Call
  before the first compilation."""
  import jax  # pylint: disable=import-outside-toplevel  # after platform_flags in entry points
  if directory is None or directory.strip().lower() in DISABLED:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = directory
  if "://" not in directory:  # a bucket path (gs://...) is passed to JAX as it is
    path = os.path.abspath(os.path.expanduser(directory))
    try:
      os.makedirs(path, exist_ok=True)
      _give_access_times(path)
    except OSError as error:  # also filelock's Timeout
      print(f"note: compilation cache off, cannot write to {path} "
            f"({error.strerror or error}); pass --compilation_cache=DIR with a writable "
            "directory")
      jax.config.update("jax_enable_compilation_cache", False)
      return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # also turns on the lock
  if not _LISTENING:
    jax.monitoring.register_event_listener(_count_event)
    _LISTENING.append(True)
  return path


def _give_access_times(path: str) -> None:
  """Writes the current time as the access time of every entry in ``path`` that has none
  (written by a JAX program without a size limit): with the limit on, JAX reads every
  entry's access time before it writes a new entry, and one missing file stops all writes.
  Holds JAX's lock file meanwhile, so no run writes at the same moment."""
  import filelock  # pylint: disable=import-outside-toplevel  # JAX's own lock, pinned
  with filelock.FileLock(os.path.join(path, ".lockfile"), timeout=60):
    now = time.time_ns().to_bytes(8, "little")  # JAX's format: nanoseconds, little-endian
    for name in os.listdir(path):
      if name.endswith(ENTRY_SUFFIX):
        access_time = os.path.join(path, name[:-len(ENTRY_SUFFIX)] + ACCESS_TIME_SUFFIX)
        if not os.path.exists(access_time):
          with open(access_time, "wb") as file:
            file.write(now)


def directory() -> str | None:
  """The directory JAX's persistent compilation cache uses in this process, or None when it
  is off."""
  import jax  # pylint: disable=import-outside-toplevel
  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir or None


def _count_event(event: str, **kwargs) -> None:
  del kwargs
  if event in ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"):
    _EVENTS[event.rsplit("/", 1)[1]] += 1


def event_counts() -> dict:
  """The cache hits and misses counted so far in this process (zero while the cache is off)."""
  return dict(_EVENTS)


def obtained_since(counts: dict) -> str:
  """How the programs compiled since ``counts`` (``event_counts()``) were obtained:
  "read from the compilation cache", "compiled", "partly read from the compilation cache",
  or, with the cache on and no lookup at all, "reused from this process" (JAX keeps the
  programs it compiled in memory); "compiled" while the cache is off."""
  hits = _EVENTS["cache_hits"] - counts.get("cache_hits", 0)
  misses = _EVENTS["cache_misses"] - counts.get("cache_misses", 0)
  if hits and misses:
    return "partly read from the compilation cache"
  if hits:
    return "read from the compilation cache"
  return "reused from this process" if not misses and directory() else "compiled"


def enable_from_flag() -> str | None:
  """``enable`` with the ``--compilation_cache`` flag's value."""
  return enable(_FLAG.value)

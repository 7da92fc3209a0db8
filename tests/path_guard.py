"""Run a program with a record of every os / os.path / open call that a gsc_jax module makes
on a bucket path (tests/test_bucket_workdir.py): such a call would treat ``gs://...`` as a
local path. Used as ``python tests/path_guard.py REPORT.json -m gsc_jax.main ARGS...``.

Every function of ``os.path``, the file functions of ``os`` and ``shutil``, and ``open`` are
wrapped; a call whose direct caller is a gsc_jax module and one of whose arguments names a
bucket path is recorded (function, caller file and line). The report is written at exit.
"""

import atexit
import builtins
import json
import os
import runpy
import shutil
import sys

BUCKET_MARKERS = ("gs://", "gs:/")
OS_FUNCTIONS = ("makedirs", "mkdir", "remove", "unlink", "rmdir", "replace", "rename",
                "listdir", "scandir", "walk", "stat", "open")
SHUTIL_FUNCTIONS = ("rmtree", "copytree", "copy", "copyfile", "move")


def _names_bucket(value) -> bool:
  try:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
  except TypeError:
    return False
  return isinstance(text, str) and text.startswith(BUCKET_MARKERS)


def _wrap(owner, name, calls, label):
  original = getattr(owner, name, None)
  if original is None or not callable(original):
    return

  def guarded(*args, **kwargs):
    caller = sys._getframe(1)  # pylint: disable=protected-access
    module = caller.f_globals.get("__name__", "")
    if module.startswith("gsc_jax") and any(
        _names_bucket(value) for value in (*args, *kwargs.values())):
      calls.append({"function": f"{label}.{name}", "module": module,
                    "file": caller.f_code.co_filename, "line": caller.f_lineno})
    return original(*args, **kwargs)

  setattr(owner, name, guarded)


def install(report_path: str) -> None:
  calls = []
  for name in dir(os.path):
    if not name.startswith("_") and callable(getattr(os.path, name)):
      _wrap(os.path, name, calls, "os.path")
  for name in OS_FUNCTIONS:
    _wrap(os, name, calls, "os")
  for name in SHUTIL_FUNCTIONS:
    _wrap(shutil, name, calls, "shutil")
  _wrap(builtins, "open", calls, "builtins")

  def write_report():
    with open(report_path, "w") as f:  # pylint: disable=unspecified-encoding
      json.dump(calls, f)

  atexit.register(write_report)


if __name__ == "__main__":
  report, module_flag, module, *arguments = sys.argv[1:]
  assert module_flag == "-m", "usage: path_guard.py REPORT.json -m MODULE ARGS..."
  install(report)
  sys.argv = [module, *arguments]
  runpy.run_module(module, run_name="__main__", alter_sys=True)

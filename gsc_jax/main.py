"""Entry point: ``python -m gsc_jax.main --config=configs/synthetic.py:15-1``.

Flags: ``--config`` (an ml_collections config file with its argument, see
configs/common.py), ``--config.<field>=<value>`` overrides, ``--workdir`` (default: the
config's ``workdir``, or runs/<dataset>_<task>_<method>_<ov|dis>_seed<seed>; a bucket path
such as ``gs://BUCKET/run`` works), and the multi-host flags:

* ``--distributed``: call ``jax.distributed.initialize()``, which finds the coordinator,
  the number of processes and this process's id itself on Cloud TPU VMs, SLURM, Open MPI
  and Kubernetes, or reads ``JAX_COORDINATOR_ADDRESS``;
* ``--coordinator_address=HOST:PORT``, ``--num_processes=N``, ``--process_id=I`` (each
  implies ``--distributed``): for local runs and clusters JAX does not detect, e.g. two
  local processes: ``launch/local_two_process.sh``.

Every process runs the same command; launch/README.md has the commands for pods and SLURM.
``--compilation_cache=DIR|none`` moves or turns off the persistent compilation cache
(default ~/.cache/gsc_jax/xla; gsc_jax/compilation_cache.py). ``--show_config`` prints the
resolved config (it is always saved as <workdir>/config.json).

Exit codes: 0 done; 2 bad input (one line saying what to fix); 3 stopped on purpose
(a signal or ``stop_after_iterations``: run the same command to resume); 4 diverged (a
loss term or the gradient became non-finite). Any other failure prints its traceback.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gsc_jax import platform_flags

platform_flags.set_default_cpu_flags()  # before jax starts its backend

import jax  # pylint: disable=wrong-import-position

from configs import common  # pylint: disable=wrong-import-position
from gsc_jax import compilation_cache  # pylint: disable=wrong-import-position
from gsc_jax import errors  # pylint: disable=wrong-import-position
from gsc_jax import methods  # pylint: disable=wrong-import-position
from gsc_jax import tasks  # pylint: disable=wrong-import-position
from gsc_jax import train  # pylint: disable=wrong-import-position
from gsc_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position
from gsc_jax.data import pipeline  # pylint: disable=wrong-import-position
from gsc_jax.reporting import log  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/synthetic.py:15-1", "Config file and argument.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (overrides config.workdir).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (TPU pods, SLURM, ...).")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of the run (implies --distributed).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id, 0..num_processes-1 (implies --distributed).")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (always saved as <workdir>/config.json).")
flags.adopt_module_key_flags(compilation_cache)  # --compilation_cache in --help

def usage_text() -> str:
  """What ``--help`` adds to this docstring: the methods, the tasks of each dataset and
  where the config fields are."""
  lines = ["Methods (method=NAME; one module each in gsc_jax/methods/):"]
  for name in methods.names():
    first_paragraph = " ".join((methods.module_of(name).__doc__ or "").split("\n\n")[0].split())
    summary = first_paragraph.split(":")[0].rstrip(".")
    lines.append(f"  {name:5s} {summary}")
  lines.append("Tasks (--config=FILE:TASK[,key=value,...]):")
  for dataset in pipeline.DATASETS:  # each has its config file configs/<dataset>.py
    lines.append(f"  {'configs/' + dataset + '.py':22s} "
                 f"{', '.join(tasks.valid_task_names(dataset))}")
  lines += ["Config fields: the protocol's, with default and meaning, in configs/common.py "
            "(get_base_config); each method's own in gsc_jax/methods/<method>.py (SWITCHES, "
            "OPTIONS);",
            "  set one as --config=FILE:TASK,section.key=value or --config.section.key=value.",
            "Example: python -m gsc_jax.main --config=configs/synthetic.py:15-1,method=plop"]
  return "\n".join(lines)


def distributed_arguments() -> dict | None:
  """The keyword arguments of ``jax.distributed.initialize`` from the flags, or None for a
  single-process run."""
  arguments = {name: flag.value for name, flag in (
      ("coordinator_address", _COORDINATOR_ADDRESS), ("num_processes", _NUM_PROCESSES),
      ("process_id", _PROCESS_ID)) if flag.value is not None}
  if not arguments and not _DISTRIBUTED.value:
    return None
  return arguments


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` for a multi-process run (module docstring)."""
  arguments = distributed_arguments()
  if arguments is None:
    return
  try:
    jax.distributed.initialize(**arguments)
  except (ValueError, TypeError) as error:  # nothing detected, or inconsistent values
    raise errors.InputError(
        f"cannot start the multi-process run ({error}); outside a platform JAX detects "
        "(Cloud TPU VM, SLURM, Open MPI, Kubernetes) pass --coordinator_address=HOST:PORT "
        "--num_processes=N --process_id=I on every process") from None
  log(f"process {jax.process_index()} of {jax.process_count()}: "
      f"{jax.local_device_count()} local of {jax.device_count()} devices")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax and grain report every save at INFO level; keep the progress lines readable.
  logging.set_verbosity(logging.WARNING)
  compilation_cache.enable_from_flag()  # before anything compiles
  try:
    initialize_distributed()
  except errors.InputError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  try:
    config = _CONFIG.value
    config.method  # pylint: disable=pointless-statement  # a file that failed to load raises here
  except OSError as error:
    text = " ".join(str(error).split())
    # ml_collections prefixes the reason ("[Errno 2] ...") with how it searched for the file.
    text = text[text.find("[Errno"):] if "[Errno" in text else text
    print(f"error: cannot read the --config file: {text}", file=sys.stderr)
    sys.exit(2)
  try:
    workdir = workdir_lib.prepare(config, _WORKDIR.value)
    if _SHOW_CONFIG.value and jax.process_index() == 0:
      print("config:\n" + config.to_json_best_effort(indent=2), flush=True)
    train.train_and_evaluate(config, workdir)
  except errors.InputError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except errors.RunStopped as stopped:
    print(f"{stopped}; run the same command again to resume", file=sys.stderr)
    sys.exit(3)
  except errors.RunDiverged as diverged:
    print(f"diverged: {diverged}", file=sys.stderr)
    sys.exit(4)


def parse_flags(argv):
  """absl flag parsing, with one readable line for a bad config argument or override."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    print(f"error: {_unknown_override_message(argv, error)}", file=sys.stderr)
    sys.exit(2)
  except flags.Error as error:
    print(f"error: {_innermost_input_error(error) or error}", file=sys.stderr)
    sys.exit(2)


def _unknown_override_message(argv, error) -> str:
  """The error for a ``--config.<key>=`` override naming no field: the closest keys and the
  keys of its section (``common.unknown_key_message``)."""
  base = common.get_base_config("synthetic", "15-1")  # every dataset has the same fields
  known = set(common.field_paths(base))
  for arg in argv:
    if arg.startswith("--config."):
      key = arg.removeprefix("--config.").split("=")[0]
      if key not in known:
        return common.unknown_key_message(key, base)
  return f"unknown config field: {error}"


def _innermost_input_error(error):
  """The first ``errors.InputError`` that caused ``error`` (ml_collections re-raises a config
  file's error with the traceback in its message), or None."""
  found = None
  while error is not None:
    if isinstance(error, errors.InputError):
      found = error
    error = error.__cause__ or error.__context__
  return found


if __name__ == "__main__":
  __doc__ += "\n" + usage_text()  # absl's --help prints the main module's docstring
  app.run(main, flags_parser=parse_flags)

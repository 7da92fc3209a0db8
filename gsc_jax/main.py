"""Entry point: ``python -m gsc_jax.main --config=configs/synthetic.py:15-1``.

Flags: ``--config`` (an ml_collections config file with its argument, see
configs/common.py), ``--config.<field>=<value>`` overrides, ``--workdir`` (default: the
config's ``workdir``, or runs/<dataset>_<task>_<method>_<ov|dis>_seed<seed>), and
``--distributed`` to call ``jax.distributed.initialize()`` on multi-host platforms.

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

from gsc_jax import errors  # pylint: disable=wrong-import-position
from gsc_jax import train  # pylint: disable=wrong-import-position
from gsc_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/synthetic.py:15-1", "Config file and argument.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (overrides config.workdir).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (TPU pods, SLURM, ...).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax and grain report every save at INFO level; keep the progress lines readable.
  logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
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
    overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
    print(f"error: unknown config field {_one_line(error)} (in {', '.join(overrides)}); "
          "every field is listed in configs/common.py (get_base_config)", file=sys.stderr)
    sys.exit(2)
  except flags.Error as error:
    print(f"error: {_innermost_input_error(error) or error}", file=sys.stderr)
    sys.exit(2)


def _one_line(error) -> str:
  """The text of ``error`` (ml_collections puts a 'Did you mean' hint on a second line)
  with its lines joined by '; ' and without the quotes a KeyError adds."""
  text = str(error.args[0]) if error.args else str(error)
  # An AttributeError that wraps a KeyError holds the KeyError's repr: escaped quotes, \n.
  text = text.replace("\\n", "\n").replace("\\'", "'")
  return "; ".join(part.strip(" '\"") for part in text.splitlines() if part.strip())


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
  app.run(main, flags_parser=parse_flags)

"""The project's own error types: bad input that the user can fix.

``python -m gsc_jax.main`` prints an ``InputError`` (an unknown task, a config value out
of range, a missing dataset file, a corrupt image, ...) as one line that says what to do.
Every other exception is a bug or an unexpected failure and keeps its full traceback.
Both types subclass the builtin they refine, so ``except ValueError`` still catches them.
"""

import difflib


class InputError(ValueError):
  """A config value, a command-line argument or a data file is wrong; the message names it
  and says how to fix it."""


class MissingFileError(InputError, FileNotFoundError):
  """A file or directory the run needs does not exist; the message names it."""


class RunStopped(Exception):
  """The run stopped before its end on purpose, after saving what it needs to resume
  (a signal, or ``stop_after_iterations``); running the same command continues it."""


class RunDiverged(Exception):
  """A loss term or the gradient became non-finite; nothing from the diverged model was
  saved. The message names the step, the iteration and the terms."""


def closest(word: str, candidates) -> list[str]:
  """Up to three of ``candidates`` closest to ``word`` in spelling (difflib's ratio >= 0.6),
  best first; for "did you mean" hints."""
  return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3, cutoff=0.6)


def did_you_mean(word: str, candidates, prefix: str = "") -> str:
  """"did you mean X? " (or "X or Y? ") for the candidates closest to ``word``, each shown
  after ``prefix``; "" when none is close."""
  matches = [prefix + match for match in closest(word, candidates)]
  return f"did you mean {' or '.join(matches)}? " if matches else ""

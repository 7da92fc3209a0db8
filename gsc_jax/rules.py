"""The rules a config value is checked against (gsc_jax/validation.py): each ``problem(value)``
returns None for a valid value, else what is wrong ("must be ..."). The protocol's fields
use them in validation.FIELDS, each method's fields in its module (gsc_jax/methods/)."""

import dataclasses
import math

from gsc_jax import errors


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of ``values`` (a tuple, or a function giving it when the valid set is open)."""
  values: object

  def problem(self, value):
    values = self.values() if callable(self.values) else self.values
    if value not in values:
      return f"must be one of: {', '.join(map(str, values))}{_hint(value, values)}"
    return None


def _hint(value, values) -> str:
  """"; did you mean X?" for a text close to a valid choice."""
  hint = errors.did_you_mean(value, values) if isinstance(value, str) else ""
  return f"; {hint.strip()}" if hint else ""


@dataclasses.dataclass(frozen=True)
class Number:
  """A number of ``kind`` (int or float) in [minimum, maximum]; an exclusive bound is
  given by ``above`` / ``below``."""
  kind: type = float
  minimum: float | None = None
  maximum: float | None = None
  above: float | None = None
  below: float | None = None

  def problem(self, value):
    if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float
                                                  else int):
      return f"must be {'a number' if self.kind is float else 'an integer'}"
    if not math.isfinite(value):
      return "must be finite"
    bounds = []
    if self.minimum is not None and value < self.minimum:
      bounds.append(f">= {self.minimum}")
    if self.maximum is not None and value > self.maximum:
      bounds.append(f"<= {self.maximum}")
    if self.above is not None and value <= self.above:
      bounds.append(f"> {self.above}")
    if self.below is not None and value >= self.below:
      bounds.append(f"< {self.below}")
    return f"must be {' and '.join(bounds)}" if bounds else None


@dataclasses.dataclass(frozen=True)
class OffOrPositive:
  """-1 (off) or an integer >= 1."""

  def problem(self, value):
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
      return "must be -1 (off) or an integer >= 1"
    return None


@dataclasses.dataclass(frozen=True)
class Flag:
  def problem(self, value):
    return None if isinstance(value, bool) else "must be true or false"


@dataclasses.dataclass(frozen=True)
class Text:
  def problem(self, value):
    return None if isinstance(value, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class PositiveIntegers:
  def problem(self, value):
    if (not isinstance(value, (tuple, list)) or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
      return "must be a non-empty list of integers >= 1"
    return None


POSITIVE_INTEGER = Number(int, minimum=1)
NON_NEGATIVE_INTEGER = Number(int, minimum=0)
POSITIVE = Number(float, above=0.0)
NON_NEGATIVE = Number(float, minimum=0.0)
FRACTION = Number(float, minimum=0.0, maximum=1.0)

"""What a run reports: progress lines, ``log.jsonl`` records and TensorBoard events.

Only process 0 prints and writes. TensorBoard events go to ``<workdir>/tensorboard``
(gsc_jax/tensorboard.py). ``<workdir>/log.jsonl`` is append-only, one strict JSON object a
line (RFC 8259: no bare ``NaN`` or ``Infinity``; a non-finite float is written as
``null``), of three kinds:

  {"step": t, "iteration": i, "loss": ..., "lr": ..., ...}   a progress report
  {"step": t, "eval": {...}}                                   the evaluation of step t
  {"restart": {"step": t, "iteration": i, "time": ...}}        a (re)start of the command

A restart record is written every time the command starts with work left: the run goes
on with step t after iteration i (0: from the beginning of the step; null: the step is
trained and only its evaluation is left). The iterations after i were perhaps reported
already, by a run that was killed before its next checkpoint; they are trained and
reported again. ``read_log`` gives the final history, by this rule: a restart at (t, i)
drops every record written before it of step t with an iteration above i (all of them
when i is 0), the evaluation of step t and every record of later steps; of what is left,
the record written last of each (step, iteration) and each step's evaluation is kept.
Read the log through ``read_log`` (gsc_jax/tools/benchmark.py does), not line by line.
"""

import json
import math
import sys
import time

import jax

from gsc_jax import errors
from gsc_jax import storage

LOG_FILE = "log.jsonl"


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def finite_or_null(value):
  """``value`` with every non-finite float (NaN, +-inf), however deeply nested in dicts,
  lists and tuples, replaced by None (JSON ``null``)."""
  if isinstance(value, dict):
    return {key: finite_or_null(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_null(item) for item in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def strict_json_line(record: dict) -> str:
  """``record`` as one line of strict JSON (non-finite floats as ``null``)."""
  return json.dumps(finite_or_null(record), allow_nan=False)


def _log_path(workdir: str) -> str:
  return storage.join(workdir, LOG_FILE)


def append_jsonl(workdir: str, record: dict) -> None:
  """Appends ``record`` to ``<workdir>/log.jsonl`` as one strict JSON line."""
  if jax.process_index() == 0:
    storage.append_text(_log_path(workdir), strict_json_line(record) + "\n")


def append_restart(workdir: str, step: int, iteration: int | None) -> None:
  """Appends the restart record: the run goes on with step ``step`` after iteration
  ``iteration`` (None: only the step's evaluation is left). A last line cut short by a
  kill is ended first, so that the record gets a line of its own."""
  if jax.process_index() != 0:
    return
  path = _log_path(workdir)
  if storage.last_byte(path) not in (b"", b"\n"):  # a kill mid-write
    storage.append_text(path, "\n")
  append_jsonl(workdir, {"restart": {
      "step": step, "iteration": iteration,
      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}})


def _parsed_lines(path: str) -> list[dict]:
  """The JSON objects of the lines of ``path``; a line that is not one (cut short by a
  kill) is skipped, with one warning naming the file and the line numbers."""
  if not storage.exists(path):
    raise errors.MissingFileError(f"{path} does not exist: no run has logged to this work "
                                  "dir (run training first, or pass the right work dir)")
  records, unreadable = [], []
  text = storage.read_bytes(path).decode("utf-8", errors="replace")  # garbled: a bad line
  for number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      unreadable.append(number)
      continue
    if isinstance(record, dict):
      records.append(record)
    else:
      unreadable.append(number)
  if unreadable:
    print(f"warning: {path}: skipped line(s) {', '.join(map(str, unreadable))}, which are "
          "not JSON objects (cut short by a kill?); the other lines are read",
          file=sys.stderr)
  return records


def _superseded(record: dict, restart: dict) -> bool:
  """Whether ``restart`` (written after ``record``) re-runs what ``record`` reports."""
  step, iteration = record.get("step"), record.get("iteration")
  if step is None or restart.get("step") is None:
    return False
  if step != restart["step"]:
    return step > restart["step"]
  if "eval" in record:
    return True
  resumed_after = restart.get("iteration")
  return (iteration is not None and resumed_after is not None
          and iteration > resumed_after)


def _record_key(record: dict):
  """What a record reports: ("eval", step), ("iteration", step, iteration) or None (any
  other record: kept as is)."""
  if "step" not in record:
    return None
  if "eval" in record:
    return ("eval", record["step"])
  if "iteration" in record:
    return ("iteration", record["step"], record["iteration"])
  return None


def final_history(records: list[dict]) -> list[dict]:
  """The records of the final history (module docstring), in the order written, restart
  records included."""
  kept = []
  for record in records:
    if "restart" in record and isinstance(record["restart"], dict):
      kept = [r for r in kept if not _superseded(r, record["restart"])]
    kept.append(record)
  last_of_key = {}
  for position, record in enumerate(kept):
    key = _record_key(record)
    if key is not None:
      last_of_key[key] = position
  return [record for position, record in enumerate(kept)
          if _record_key(record) is None or last_of_key[_record_key(record)] == position]


def read_log_file(path: str) -> list[dict]:
  """The final history of the log file ``path``: progress reports, evaluations and restart
  records, one record per (step, iteration) and per step's evaluation (module docstring)."""
  return final_history(_parsed_lines(path))


def read_log(workdir: str) -> list[dict]:
  """``read_log_file`` of ``<workdir>/log.jsonl``."""
  return read_log_file(_log_path(workdir))


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

"""What a run reports: progress lines, ``log.jsonl`` records and TensorBoard events.

Only process 0 prints and writes. ``log.jsonl`` holds one JSON object per progress report
and per evaluation; TensorBoard events go to ``<workdir>/tensorboard`` (gsc_jax/tensorboard.py).
"""

import json
import os

import jax


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def append_jsonl(workdir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "log.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

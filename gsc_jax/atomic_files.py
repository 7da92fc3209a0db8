"""Writing a file so that no reader (another host, a resumed run) ever sees half of it."""

import os
import uuid


def _flush_to_disk(path: str) -> None:
  """Waits until the content of ``path`` is on disk (so a crash after the rename below
  cannot leave the new name pointing at unwritten data)."""
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def write_atomically(path: str, write) -> None:
  """Calls ``write(temporary_path)`` for a temporary file beside ``path``, flushes it to
  disk, then renames it to ``path`` (the parent folder is created); the temporary file is
  removed on failure."""
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    write(temporary)
    _flush_to_disk(temporary)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise

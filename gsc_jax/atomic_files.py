"""Writing a file so that no reader (another host, a resumed run) ever sees half of it."""

import os
import uuid


def write_atomically(path: str, write) -> None:
  """Calls ``write(temporary_path)`` for a temporary file beside ``path``, then renames it
  to ``path`` (the parent folder is created); the temporary file is removed on failure."""
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    write(temporary)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise

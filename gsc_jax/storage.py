"""The one path layer: every file the program reads or writes under the work dir and the
split cache goes through these functions.

Paths are ``etils.epath`` paths, the layer orbax itself uses: a local path goes to the
operating system, a ``gs://`` path (and ``s3://``, ``az://``) to fsspec (gcsfs for
Google Cloud Storage, pinned in requirements.txt), so a work dir may be a bucket.

Two things differ between a file system and an object store, and are handled here:

* atomic writes: locally a file is written beside its target, flushed to disk and renamed
  over it, so no reader (another host, a resumed run) ever sees half of it; an object store
  publishes an object only once its upload is complete, so it is written directly;
* appends: an object cannot be appended to, so ``append_text`` rewrites the whole object
  from a copy kept in memory (it is used for ``log.jsonl``, which stays small); a local
  file is appended to.
"""

import hashlib
import io
import os
import uuid

from etils import epath
from etils.epath import backend as epath_backend

OBJECT_STORE_PREFIXES = ("gs://", "s3://", "az://", "hf://")  # what epath sends to fsspec


def path(location) -> epath.Path:
  """``location`` (a string or a path) as an epath path; ``~`` is expanded."""
  text = os.fspath(location)
  return epath.Path(text if is_object_store(text) else os.path.expanduser(text))


def is_object_store(location) -> bool:
  return os.fspath(location).startswith(OBJECT_STORE_PREFIXES)


def absolute(location) -> str:
  """``location`` as an absolute path (a bucket path is one already): orbax wants them."""
  text = os.fspath(location)
  return text.rstrip("/") if is_object_store(text) else os.path.abspath(os.path.expanduser(text))


def join(location, *names) -> str:
  return os.fspath(path(location).joinpath(*names))


def _fresh(location) -> epath.Path:
  """``path(location)``; on an object store, after dropping fsspec's cached listings of it
  (orbax writes its array data with TensorStore, past fsspec: a cached listing may miss
  those objects)."""
  if is_object_store(location):
    epath_backend.fsspec_backend.fs(os.fspath(location)).invalidate_cache()
  return path(location)


def exists(location) -> bool:
  return _fresh(location).exists()


def is_file(location) -> bool:
  return _fresh(location).is_file()


def size(location) -> int:
  return int(_fresh(location).stat().length)


def make_dirs(location) -> None:
  path(location).mkdir(parents=True, exist_ok=True)


def list_names(location) -> list[str]:
  """The names in directory ``location``, sorted."""
  return sorted(child.name for child in _fresh(location).iterdir())


def read_bytes(location) -> bytes:
  return path(location).read_bytes()


def read_text(location) -> str:
  return read_bytes(location).decode("utf-8")


def write_bytes(location, data: bytes) -> None:
  """Writes ``data`` so that no reader ever sees half of it (module docstring); the parent
  folder is created."""
  target = path(location)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_object_store(location):
    target.write_bytes(data)
    return
  temporary = f"{os.fspath(target)}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open(temporary, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # on disk before the rename: a crash cannot leave an empty name
    os.replace(temporary, os.fspath(target))
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_text(location, text: str) -> None:
  write_bytes(location, text.encode("utf-8"))


def write_with(location, write_to_file) -> None:
  """Calls ``write_to_file(binary_file)`` (PIL ``save``, matplotlib ``savefig``,
  ``np.savez``) and writes what it wrote atomically."""
  buffer = io.BytesIO()
  write_to_file(buffer)
  write_bytes(location, buffer.getvalue())


_OBJECT_CONTENT = {}  # object-store path -> its content, for appends (module docstring)


def append_text(location, text: str) -> None:
  """Appends ``text`` to the file at ``location`` (created when missing)."""
  if not is_object_store(location):
    make_dirs(os.path.dirname(os.fspath(location)) or ".")
    with open(os.fspath(location), "a", encoding="utf-8") as f:
      f.write(text)
    return
  key = absolute(location)
  if key not in _OBJECT_CONTENT:
    _OBJECT_CONTENT[key] = read_text(location) if exists(location) else ""
  _OBJECT_CONTENT[key] += text
  path(location).write_text(_OBJECT_CONTENT[key])


def last_byte(location) -> bytes:
  """The last byte of the file (b"" when it is empty or missing)."""
  if not exists(location):
    return b""
  if is_object_store(location):
    return read_bytes(location)[-1:]
  with open(os.fspath(location), "rb") as f:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
      return b""
    f.seek(-1, os.SEEK_END)
    return f.read(1)


def sha256(location) -> str:
  digest = hashlib.sha256()
  with path(location).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def files_under(directory) -> list[str]:
  """Every file under ``directory``, as sorted paths relative to it ('/'-separated)."""
  root = _fresh(directory)
  # epath's walk over a bucket gives the folders without their "gs://": compare without it.
  prefix = len(_without_scheme(root).rstrip("/")) + 1
  found = []
  for folder, _, names in root.walk():
    relative_folder = _without_scheme(folder)[prefix:]
    found += [f"{relative_folder}/{name}" if relative_folder else name for name in names]
  return sorted(found)


def _without_scheme(location) -> str:
  text = os.fspath(location)
  return text.split("://", 1)[1] if is_object_store(text) else text


def remove_tree(location) -> None:
  """Removes a directory and everything in it; nothing when it does not exist."""
  if exists(location):
    path(location).rmtree()


def remove_file(location) -> None:
  if exists(location):
    path(location).unlink()


def copy_file(source, target) -> None:
  """Copies file ``source`` to ``target`` (replacing it; its folder is created)."""
  path(target).parent.mkdir(parents=True, exist_ok=True)
  path(source).copy(path(target), overwrite=True)


def move_tree(source, target) -> None:
  """Moves directory ``source`` to ``target`` (a rename locally; a copy then a removal on
  an object store, which has no directories to rename)."""
  if is_object_store(source):
    for relative in files_under(source):
      copy_file(path(source) / relative, path(target) / relative)
    remove_tree(source)
  else:
    make_dirs(os.path.dirname(os.fspath(target)))
    os.replace(os.fspath(source), os.fspath(target))

"""A local Google Cloud Storage for tests: gcp-storage-emulator (in memory, 127.0.0.1), with
the two pieces of the GCS JSON API that TensorStore's GCS driver relies on and the emulator
lacks, added here:

* a media download carries the object's generation in ``x-goog-generation`` (TensorStore
  reads it to version what it read: OCDBT's manifest is read, changed and written back);
* an upload with ``ifGenerationMatch`` is refused with 412 when the object's generation
  differs (0: the object must not exist), which makes OCDBT's manifest update atomic.

``start(bucket)`` returns the running server and its endpoint; the environment variables
that point gcsfs (``STORAGE_EMULATOR_HOST``) and TensorStore (``TENSORSTORE_GCS_HTTP_URL``)
at it are in ``environment(endpoint)``.
"""

import http
import logging
import socket

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_original_download = objects.download
_original_insert = objects.insert


def _generation(storage, request) -> str:
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return "0"
  return str(obj.get("generation") or "0")


def _download(request, response, storage, *args, **kwargs):
  _original_download(request, response, storage, *args, **kwargs)
  if response.status in (http.HTTPStatus.OK, http.HTTPStatus.PARTIAL_CONTENT):
    response["x-goog-generation"] = _generation(storage, request)
    response["x-goog-metageneration"] = "1"


def _insert(request, response, storage, *args, **kwargs):
  expected = request.query.get("ifGenerationMatch")
  name = request.query.get("name")
  if expected and name:
    request.params.setdefault("object_id", name[0])
    if _generation(storage, request) != expected[0]:
      response.status = http.HTTPStatus.PRECONDITION_FAILED
      return
  _original_insert(request, response, storage, *args, **kwargs)


def _install() -> None:
  if objects.download is _download:
    return
  objects.download = _download  # objects.get calls it by name for alt=media
  objects.insert = _insert  # the router calls it by name for uploads without /upload
  for _, handlers in emulator_server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is _original_download:
        handlers[method] = _download
      elif handler is _original_insert:
        handlers[method] = _insert


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def start(bucket: str):
  """A running in-memory emulator with ``bucket``; returns (server, endpoint URL)."""
  _install()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  port = free_port()
  server = emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                         default_bucket=bucket)
  server.start()
  return server, f"http://127.0.0.1:{port}"


def environment(endpoint: str) -> dict:
  return {"STORAGE_EMULATOR_HOST": endpoint,  # gcsfs and google-cloud-storage
          "TENSORSTORE_GCS_HTTP_URL": endpoint,  # TensorStore: orbax's array data
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "unused"}  # TensorStore: no credentials

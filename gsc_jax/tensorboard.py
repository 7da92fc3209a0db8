"""TensorBoard event files for a run, written without TensorFlow.

Writer chosen: ``tensorboardX`` (pinned in requirements.txt). It installs from PyPI with
only numpy, packaging and protobuf>=3.20 as dependencies, imports in about 0.2 s without
TensorFlow or torch, and its generated protos work with the protobuf 7 runtime that
tensorflow-datasets brings in. ``flax.metrics.tensorboard`` and ``clu.metric_writers``
import TensorFlow; ``torch.utils.tensorboard`` needs torch; writing the event protos by
hand would mean shipping our own generated ``*_pb2`` files and a CRC-32C. Of tensorboardX
only its protos (``Event``, ``Summary``) and its synchronous record writer
(``EventsWriter``: TFRecord framing, masked CRC-32C, fsync on flush) are used; its
``SummaryWriter`` is not, because that one writes from a background thread and its
``flush()`` does not wait for the queued events.

Files go to ``<workdir>/tensorboard/events.out.tfevents.*``; point ``tensorboard --logdir``
at the workdir (or at a folder of workdirs). On an object store (a ``gs://`` work dir) an
event file cannot be appended to: its records are kept in memory and the whole object is
written again on every flush, through gsc_jax/storage.py (the same as TensorFlow's own
writer does on GCS). Only process 0 (``jax.process_index()``)
writes; every other process gets an inactive writer whose methods do nothing.
``read_events`` / ``read_scalars`` read the files back (tests, quick checks).
"""

import io
import struct
import time
import uuid

import jax
import numpy as np
from PIL import Image
from tensorboardX import event_file_writer as tbx_event_file_writer
from tensorboardX import record_writer as tbx_record_writer
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from gsc_jax import storage

SUBDIR = "tensorboard"
EVENT_FILE_PATTERN = "events.out.tfevents.*"


class EventWriter:
  """Writes scalars and images of a run to ``<workdir>/tensorboard/``.

  ``step`` is TensorBoard's x axis (e.g. the global training iteration). ``purge_step``:
  when a run resumes from a checkpoint taken at iteration T, pass T so that TensorBoard
  hides the events at steps >= T that the interrupted run wrote after that checkpoint.

  Writes are synchronous (each call appends to the file; ``flush`` fsyncs it). Use as a
  context manager or call ``close``; writing after ``close`` raises RuntimeError.
  """

  def __init__(self, workdir: str, *, purge_step: int | None = None):
    self.logdir = storage.join(workdir, SUBDIR)
    self.active = jax.process_index() == 0
    self._writer = None
    self._closed = False
    self._purge_step = purge_step
    # The event file this writer appends to: created at the first write, so that a run
    # that writes nothing (a rerun of a finished run) leaves no empty file. None until then,
    # and on processes other than 0.
    self.path = None

  def _open_file(self) -> None:
    storage.make_dirs(self.logdir)
    # A unique suffix: two writers opened in the same second (the file name has the time
    # in seconds and the host name) must not truncate each other's file.
    self._writer = tbx_event_file_writer.EventsWriter(
        storage.join(self.logdir, "events"), filename_suffix=f".{uuid.uuid4().hex[:8]}")
    self.path = self._writer._file_name
    if self._purge_step is not None:
      self._writer.write_event(event_pb2.Event(
          wall_time=time.time(), step=int(self._purge_step),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _check_open(self) -> bool:
    """Whether to write: False on an inactive writer; raises once closed."""
    if self._closed:
      raise RuntimeError(f"EventWriter for {self.logdir} is closed")
    return self.active

  def scalars(self, step: int, values: dict) -> None:
    """Writes one scalar per tag at ``step``, as one event.

    Values may be Python or numpy numbers or one-element (jax) arrays. NaN and +-inf are
    written as they are (TensorBoard shows them); None values are skipped (e.g. the "new"
    mIoU at step 0). A value with more than one element raises ValueError.
    """
    if not self._check_open():
      return
    summary = summary_pb2.Summary()
    for tag, value in values.items():
      if value is None:
        continue
      array = np.asarray(value)
      if array.size != 1:
        raise ValueError(f"scalar {tag!r} has shape {array.shape}; one value expected")
      summary.value.add(tag=str(tag), simple_value=float(array.reshape(())))
    if summary.value:
      self._write(step, summary)

  def image(self, step: int, tag: str, array) -> None:
    """Writes a uint8 [H, W, C] image (C = 1, 3 or 4) at ``step``, PNG-encoded."""
    if not self._check_open():
      return
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3, 4):
      raise ValueError(f"image {tag!r}: uint8 [H, W, 1|3|4] expected, got {array.dtype} "
                       f"{array.shape}")
    height, width, channels = array.shape
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if channels == 1 else array).save(buffer, format="PNG")
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=str(tag), image=summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels,
            encoded_image_string=buffer.getvalue()))])
    self._write(step, summary)

  def _write(self, step: int, summary) -> None:
    if self._writer is None:
      self._open_file()
    self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary))

  def flush(self) -> None:
    """Flushes and fsyncs the event file (TensorBoard sees everything written so far)."""
    if self._check_open() and self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the file; closing twice is fine."""
    if self._closed:
      return
    self._closed = True
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


# --- reading back ------------------------------------------------------------------------------

class _ObjectStoreEventFile:
  """An event file on an object store (module docstring): written whole on every flush."""

  def __init__(self, path: str):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    storage.write_bytes(self.path, self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _ObjectStoreEventFiles:
  """tensorboardX's writer factory interface, for the object-store prefixes."""

  def open(self, path: str) -> _ObjectStoreEventFile:
    return _ObjectStoreEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # an object store has no directories to create


for _prefix in storage.OBJECT_STORE_PREFIXES:
  tbx_record_writer.register_writer_factory(_prefix.split(":")[0], _ObjectStoreEventFiles())


def event_files(logdir: str) -> list[str]:
  """The event files in ``logdir`` (e.g. ``<workdir>/tensorboard``), oldest name first."""
  return sorted(str(path) for path in storage.path(logdir).glob(EVENT_FILE_PATTERN))


def read_events(path: str) -> list:
  """Every ``Event`` proto of one event file, in order.

  Parses the TFRecord framing (uint64 length, masked CRC-32C of the length, data, masked
  CRC-32C of the data) and raises ValueError on a bad checksum or a truncated record.
  """
  data = storage.read_bytes(path)
  events = []
  offset = 0
  while offset < len(data):
    if offset + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {offset}")
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    if header_crc != tbx_record_writer.masked_crc32c(header):
      raise ValueError(f"{path}: bad length checksum at byte {offset}")
    start = offset + 12
    end = start + length
    if end + 4 > len(data):
      raise ValueError(f"{path}: truncated record at byte {offset}")
    payload = data[start:end]
    (payload_crc,) = struct.unpack("<I", data[end:end + 4])
    if payload_crc != tbx_record_writer.masked_crc32c(payload):
      raise ValueError(f"{path}: bad data checksum at byte {offset}")
    events.append(event_pb2.Event.FromString(payload))
    offset = end + 4
  return events


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value), ...] over all event files of ``logdir``, in file order.

  Purges (``purge_step``) are not applied: every written value is returned.
  """
  scalars = {}
  for path in event_files(logdir):
    for event in read_events(path):
      for value in event.summary.value:
        if value.WhichOneof("value") == "simple_value":
          scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars

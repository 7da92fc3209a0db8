"""Tests of what a user watches: TensorBoard event files (gsc_jax.tensorboard), the
pictures and plots of gsc_jax.pictures and the header a run starts with."""

import importlib
import io
import math
import os
import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image

from gsc_jax import errors
from gsc_jax import pictures
from gsc_jax import tasks
from gsc_jax import tensorboard
from gsc_jax import train
from gsc_jax.data import transforms

# The 21 Pascal VOC colours (background + 20 classes) as published with the devkit.
VOC_21_COLORS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
    (0, 192, 0), (128, 192, 0), (0, 64, 128)]


def _summaries():
  """Step summaries like metrics.summarize_step's (fractions; "new" None at step 0)."""
  return [{"step": 0, "all": 0.75, "old": 0.75, "new": None},
          {"step": 1, "all": 0.60, "old": 0.70, "new": 0.30},
          {"step": 2, "all": 0.55, "old": 0.65, "new": 0.35}]


def _decode_png(path):
  with open(path, "rb") as file:
    data = file.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


# --- palette and colorize ------------------------------------------------------------------------

def test_voc_palette():
  palette = pictures.VOC_PALETTE
  assert palette.shape == (256, 3) and palette.dtype == np.uint8
  assert tuple(palette[0]) == (0, 0, 0)
  assert tuple(palette[1]) == (128, 0, 0)
  assert tuple(palette[255]) == (255, 255, 255)
  assert [tuple(int(v) for v in color) for color in palette[:21]] == VOC_21_COLORS
  assert len({tuple(color) for color in palette[:21]}) == 21
  # The bit interleaving is a bijection of the 8 bits, and white (void) is not reachable
  # otherwise (red and green have 3 bits, blue 2), so all 256 entries differ.
  assert len({tuple(color) for color in palette}) == 256
  assert not palette.flags.writeable


def test_colorize_round_trip():
  rng = np.random.default_rng(0)
  label_map = rng.integers(0, 21, size=(7, 9)).astype(np.uint8)
  label_map[0, :3] = 255
  colored = pictures.colorize(label_map)
  assert colored.shape == (7, 9, 3) and colored.dtype == np.uint8
  assert (colored[0, :3] == 255).all()
  # Back from colours to ids through the (bijective) palette.
  lookup = {tuple(int(v) for v in color): index for index, color in enumerate(pictures.VOC_PALETTE)}
  recovered = np.array([[lookup[tuple(int(v) for v in px)] for px in row] for row in colored])
  np.testing.assert_array_equal(recovered, label_map)


@pytest.mark.parametrize("bad_value", [21, -1])
def test_colorize_rejects_ids_outside_palette(bad_value):
  label_map = np.zeros((3, 3), dtype=np.int32)
  label_map[1, 1] = bad_value
  with pytest.raises(errors.InputError, match=rf"\[{bad_value}\].*outside.*\[0, 21\)"):
    pictures.colorize(label_map, pictures.VOC_PALETTE[:21])


def test_colorize_rejects_float_maps():
  with pytest.raises(errors.InputError, match="integer"):
    pictures.colorize(np.zeros((2, 2), dtype=np.float32))


# --- prediction grid and PNG files ---------------------------------------------------------------

def test_prediction_grid_layout_and_unnormalisation():
  rng = np.random.default_rng(1)
  num, height, width, sep = 3, 5, 8, 2
  originals = rng.integers(0, 256, size=(num, height, width, 3), dtype=np.uint8)
  images = np.stack([transforms.normalize(image) for image in originals])
  labels = rng.integers(0, 21, size=(num, height, width)).astype(np.uint8)
  labels[:, 0, 0] = 255
  predictions = rng.integers(0, 21, size=(num, height, width)).astype(np.int32)

  grid = pictures.prediction_grid(images, labels, predictions, transforms.IMAGENET_MEAN,
                                  transforms.IMAGENET_STD, separator=sep)
  assert grid.dtype == np.uint8
  assert grid.shape == (num * height + (num - 1) * sep, 3 * width + 2 * sep, 3)
  for row in range(num):
    top = row * (height + sep)
    image, truth, prediction = (
        grid[top:top + height, column * (width + sep):column * (width + sep) + width]
        for column in range(3))
    # The image was normalised in float32 and is un-normalised in float32: the round trip
    # is off by float rounding only (well under 0.5 of a uint8 level), so at most 1 after
    # rounding to an integer.
    assert np.abs(image.astype(int) - originals[row].astype(int)).max() <= 1
    np.testing.assert_array_equal(truth, pictures.colorize(labels[row]))
    np.testing.assert_array_equal(prediction, pictures.colorize(predictions[row]))
    assert tuple(truth[0, 0]) == (255, 255, 255)  # void
  # Separators: the columns between panels and the rows between examples are white.
  assert (grid[:, width:width + sep] == 255).all()
  assert (grid[height:height + sep, :] == 255).all()


def test_prediction_grid_checks_shapes():
  images = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="labels"):
    pictures.prediction_grid(images, np.zeros((2, 4, 5), np.uint8), np.zeros((2, 4, 4), np.uint8),
                             transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


def test_save_png_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  array = rng.integers(0, 256, size=(11, 17, 3), dtype=np.uint8)
  path = os.path.join(tmp_path, "sub", "grid.png")
  pictures.save_png(path, array)
  image = _decode_png(path)
  assert image.size == (17, 11) and image.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(image), array)
  assert os.listdir(os.path.dirname(path)) == ["grid.png"]  # no temporary file left
  pictures.save_png(path, array[:, :, 0])  # overwriting works, grey too
  assert _decode_png(path).mode == "L"


def test_save_png_failure_keeps_old_file(tmp_path, monkeypatch):
  path = os.path.join(tmp_path, "grid.png")
  pictures.save_png(path, np.zeros((2, 3, 3), np.uint8))

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(Image.Image, "save", fail)
  with pytest.raises(OSError, match="disk full"):
    pictures.save_png(path, np.full((2, 3, 3), 9, np.uint8))
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ["grid.png"]
  assert (np.asarray(_decode_png(path)) == 0).all()


def test_save_png_rejects_non_uint8(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    pictures.save_png(os.path.join(tmp_path, "x.png"), np.zeros((2, 2, 3), np.float32))


# --- plots ---------------------------------------------------------------------------------------

def test_pictures_import_does_not_import_matplotlib():
  # A fresh interpreter: this process may have imported matplotlib already.
  import subprocess
  code = "import sys, gsc_jax.pictures; print('matplotlib' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.stdout.strip() == "False"


def test_miou_figure_content():
  figure = pictures._miou_figure(_summaries(), "voc 15-5s")
  (axes,) = figure.axes
  assert axes.get_ylim() == (0, 100)
  assert axes.get_xlabel() == "step" and axes.get_ylabel() == "mIoU (%)"
  assert axes.get_title() == "voc 15-5s"
  lines = {line.get_label(): line for line in axes.get_lines()}
  assert [text.get_text() for text in axes.get_legend().get_texts()] == list(lines)
  np.testing.assert_allclose(lines["all"].get_ydata(), [75, 60, 55])
  np.testing.assert_allclose(lines["old (step-0 classes)"].get_ydata(), [75, 70, 65])
  new = lines["new"].get_ydata()
  assert math.isnan(new[0]) and np.allclose(new[1:], [30, 35])
  np.testing.assert_array_equal(lines["all"].get_xdata(), [0, 1, 2])


def test_miou_plot_png(tmp_path):
  path = os.path.join(tmp_path, "plots", "miou.png")
  # Unsorted input: the plot sorts by step.
  pictures.miou_plot(_summaries()[::-1], "voc 15-5s", path)
  image = _decode_png(path)
  assert image.size == (640, 400)
  pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
  # The three curves are drawn in matplotlib's first three colours.
  for color in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)):
    assert (np.abs(pixels - color).sum(axis=1) < 10).sum() > 50, color
  assert os.listdir(os.path.dirname(path)) == ["miou.png"]


def _visible_xticks(axes):
  low, high = axes.get_xlim()
  return [float(tick) for tick in axes.get_xticks() if low <= tick <= high]


def test_miou_plot_step_0_only(tmp_path):
  (axes,) = pictures._miou_figure(_summaries()[:1], "step 0").axes
  assert _visible_xticks(axes) == [0.0]  # one integer tick, not -0.04 ... 0.04
  assert len(_visible_xticks(pictures._miou_figure(
      _summaries(), "x").axes[0])) == 3
  path = os.path.join(tmp_path, "miou.png")
  pictures.miou_plot(_summaries()[:1], "step 0", path)
  assert _decode_png(path).size == (640, 400)


def test_methods_figure_and_png(tmp_path):
  other = [dict(summary, all=summary["all"] / 2) for summary in _summaries()]
  per_method = {"finetune": other, "mib": _summaries(), "unfinished": []}
  figure = pictures._methods_figure(per_method, "voc 15-1")
  (axes,) = figure.axes
  assert axes.get_ylim() == (0, 100)
  lines = axes.get_lines()
  assert len(lines) == 6  # 2 methods with results x (all, old, new)
  assert [line.get_linestyle() for line in lines] == ["-", "--", ":"] * 2
  assert lines[0].get_color() != lines[3].get_color()
  np.testing.assert_allclose(lines[0].get_ydata(), [37.5, 30, 27.5])
  np.testing.assert_allclose(lines[3].get_ydata(), [75, 60, 55])
  legend_texts = [[t.get_text() for t in legend.get_texts()] for legend in figure.legends]
  assert legend_texts == [["finetune", "mib"], ["all", "old", "new"]]

  path = os.path.join(tmp_path, "methods.png")
  pictures.methods_plot(per_method, "voc 15-1", path)
  assert _decode_png(path).size == (640, 400)
  with pytest.raises(ValueError, match="at least one method"):
    pictures.methods_plot({"unfinished": []}, "x", path)


# --- TensorBoard ---------------------------------------------------------------------------------

def test_tensorboard_module_does_not_need_tensorflow():
  """Writes and reads back events with ``import tensorflow`` and ``import torch`` made to
  fail (tensorboardX uses torch when it is installed, but must not need it)."""
  import subprocess
  code = ("import sys, tempfile; sys.modules['tensorflow'] = None; sys.modules['torch'] = None\n"
          "import gsc_jax.tensorboard as tensorboard\n"
          "writer = tensorboard.EventWriter(tempfile.mkdtemp())\n"
          "writer.scalars(3, {'loss': 0.5}); writer.close()\n"
          "print(tensorboard.read_scalars(writer.logdir))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.stdout.strip() == "{'loss': [(3, 0.5)]}"


def test_tensorboard_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  picture = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
  with tensorboard.EventWriter(str(tmp_path)) as writer:
    assert writer.active
    writer.scalars(10, {"train/loss": 1.5, "train/lr": np.float32(0.01),
                        "eval/new": None, "jax": jax.numpy.asarray(2.0)})
    writer.flush()
    # After flush the file holds the events already (before close).
    assert tensorboard.read_scalars(writer.logdir)["train/loss"] == [(10, 1.5)]
    writer.scalars(20, {"train/loss": float("nan"), "train/grad_norm": float("inf")})
    writer.image(20, "eval/grid", picture)
    writer.image(20, "eval/grey", picture[:, :, :1])
    path = writer.path
  assert os.path.dirname(path) == os.path.join(str(tmp_path), "tensorboard")
  assert tensorboard.event_files(writer.logdir) == [path]

  scalars = tensorboard.read_scalars(writer.logdir)
  assert set(scalars) == {"train/loss", "train/lr", "jax", "train/grad_norm"}
  assert scalars["train/loss"][0] == (10, 1.5)
  assert scalars["train/loss"][1][0] == 20 and math.isnan(scalars["train/loss"][1][1])
  assert scalars["train/grad_norm"] == [(20, math.inf)]
  assert scalars["train/lr"][0][0] == 10 and scalars["train/lr"][0][1] == pytest.approx(0.01)
  assert scalars["jax"] == [(10, 2.0)]

  events = tensorboard.read_events(path)
  assert events[0].file_version == "brain.Event:2"
  images = {value.tag: (event.step, value.image) for event in events
            for value in event.summary.value if value.HasField("image")}
  assert set(images) == {"eval/grid", "eval/grey"}
  step, image = images["eval/grid"]
  assert step == 20 and (image.height, image.width, image.colorspace) == (6, 10, 3)
  decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
  np.testing.assert_array_equal(decoded, picture)
  assert images["eval/grey"][1].colorspace == 1


def test_tensorboard_reader_detects_corruption(tmp_path):
  with tensorboard.EventWriter(str(tmp_path)) as writer:
    writer.scalars(1, {"loss": 0.5})
    path = writer.path
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF  # inside the last record's payload
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="checksum"):
    tensorboard.read_events(path)
  open(path, "wb").write(bytes(data[:-3]))
  with pytest.raises(ValueError, match="truncated"):
    tensorboard.read_events(path)


def test_tensorboard_purge_step_and_two_writers(tmp_path):
  with tensorboard.EventWriter(str(tmp_path)) as first:
    first.scalars(5, {"loss": 1.0})
  with tensorboard.EventWriter(str(tmp_path), purge_step=3) as second:
    second.scalars(3, {"loss": 2.0})
  # Two writers opened in the same second each keep their own file.
  assert len(tensorboard.event_files(first.logdir)) == 2
  events = tensorboard.read_events(second.path)
  assert events[1].step == 3 and events[1].session_log.status == events[1].session_log.START
  assert sorted(tensorboard.read_scalars(first.logdir)["loss"]) == [(3, 2.0), (5, 1.0)]


def test_tensorboard_writer_that_writes_nothing_leaves_no_file(tmp_path):
  """A run that writes nothing (the rerun of a finished run) adds no event file."""
  with tensorboard.EventWriter(str(tmp_path), purge_step=4) as writer:
    writer.scalars(1, {"eval/new": None})  # nothing to write
    writer.flush()
  assert writer.path is None and not os.path.exists(writer.logdir)


def test_tensorboard_closed_writer_raises(tmp_path):
  writer = tensorboard.EventWriter(str(tmp_path))
  writer.close()
  writer.close()
  with pytest.raises(RuntimeError, match="closed"):
    writer.scalars(0, {"loss": 1.0})


def test_tensorboard_rejects_bad_inputs(tmp_path):
  with tensorboard.EventWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="shape"):
      writer.scalars(0, {"loss": np.zeros(3)})
    with pytest.raises(ValueError, match="uint8"):
      writer.image(0, "grid", np.zeros((4, 4, 3), np.float32))


def test_tensorboard_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with tensorboard.EventWriter(str(tmp_path)) as writer:
    assert not writer.active and writer.path is None
    writer.scalars(0, {"loss": 1.0})
    writer.image(0, "grid", np.zeros((2, 2, 3), np.uint8))
    writer.flush()
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("config_module, argument, expected", [
    ("voc", "15-5", "task voc 15-5 (overlapped): 2 steps, classes [0-15] [16-20]; running "
                    "steps 0..1"),
    # Domain-incremental: every class at step 0, later steps bring cities, not classes.
    ("cityscapes", "11-5", "task cityscapes 11-5 (domain-incremental): 3 steps, classes "
                           "[0-18], cities per step 11 5 5; running steps 0..2"),
])
def test_the_start_header_names_the_steps(config_module, argument, expected):
  config = importlib.import_module(f"configs.{config_module}").get_config(argument)
  task = tasks.task_of(config)
  run = types.SimpleNamespace(config=config, task=task, workdir="/runs/a")
  header = train.start_header(run, task.num_steps - 1).splitlines()
  assert header[0] == expected
  assert header[1] == f"method {config.method}, seed {config.seed}, work dir /runs/a"

"""Pictures of a run: coloured label maps, prediction grids and mIoU plots (PNG files).

Images are built with numpy and written with PIL. Plots use matplotlib's Agg canvas
directly (no pyplot, no global backend switch); matplotlib is imported inside the plot
functions, so importing this module stays cheap. Every file is written atomically
(gsc_jax/storage.py), so a reader never sees half a PNG.
"""

import numpy as np
from PIL import Image

from gsc_jax import errors
from gsc_jax import storage
from gsc_jax.tasks import IGNORE_LABEL

VOID_COLOR = (255, 255, 255)
SEPARATOR_COLOR = (255, 255, 255)
PLOT_SIZE_INCHES = (6.4, 4.0)
PLOT_DPI = 100  # plots are PLOT_SIZE_INCHES * PLOT_DPI pixels: 640 x 400


def voc_palette(num_ids: int = 256) -> np.ndarray:
  """uint8 [num_ids, 3]: the Pascal VOC colour map (bits of the id interleaved over R, G, B
  from the most significant bit down), with the void id 255 drawn white instead of the
  official (224, 224, 192)."""
  palette = np.zeros((num_ids, 3), dtype=np.uint8)
  for index in range(num_ids):
    red = green = blue = 0
    code = index
    for bit in range(8):
      red |= ((code >> 0) & 1) << (7 - bit)
      green |= ((code >> 1) & 1) << (7 - bit)
      blue |= ((code >> 2) & 1) << (7 - bit)
      code >>= 3
    palette[index] = (red, green, blue)
  if num_ids > IGNORE_LABEL:
    palette[IGNORE_LABEL] = VOID_COLOR
  return palette


VOC_PALETTE = voc_palette()
VOC_PALETTE.setflags(write=False)


def colorize(label_map, palette=VOC_PALETTE) -> np.ndarray:
  """uint8 [H, W, 3]: each class id of the integer [H, W] ``label_map`` drawn in its
  palette colour (``palette``: [N, 3], indexed by id).

  Raises ``errors.InputError`` for a non-integer map or ids outside [0, N).
  """
  label_map = np.asarray(label_map)
  palette = np.asarray(palette, dtype=np.uint8)
  if palette.ndim != 2 or palette.shape[1] != 3:
    raise ValueError(f"palette of shape {palette.shape}; [N, 3] expected")
  if label_map.ndim != 2:
    raise errors.InputError(f"label map of shape {label_map.shape}; [H, W] expected")
  if not np.issubdtype(label_map.dtype, np.integer):
    raise errors.InputError(f"label map of dtype {label_map.dtype}; integer class ids expected")
  outside = (label_map < 0) | (label_map >= len(palette))
  if outside.any():
    bad = np.unique(label_map[outside])
    raise errors.InputError(
        f"label map has ids {bad[:10].tolist()}{' ...' if bad.size > 10 else ''} outside the "
        f"palette's [0, {len(palette)})")
  return palette[label_map]


def unnormalize(images, mean, std) -> np.ndarray:
  """uint8 [..., 3] from images normalised as ``(uint8 / 255 - mean) / std`` (see
  ``gsc_jax.data.transforms.normalize``): rounded and clipped to [0, 255]."""
  images = np.asarray(images, dtype=np.float32)
  mean = np.asarray(mean, dtype=np.float32)
  std = np.asarray(std, dtype=np.float32)
  restored = (images * std + mean) * np.float32(255.0)
  return np.clip(np.rint(restored), 0, 255).astype(np.uint8)


def prediction_grid(images, labels, predictions, mean, std, *, palette=VOC_PALETTE,
                    separator: int = 2) -> np.ndarray:
  """uint8 grid, one row per example: image | ground truth | prediction.

  ``images``: float [N, H, W, 3], normalised with ``mean`` / ``std`` (ImageNet's in the
  pipeline, ``transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``); ``labels`` and
  ``predictions``: integer [N, H, W] CLASS ids (not output channels; 255 = void, drawn
  white). Panels and rows are parted by ``separator`` white pixels, so the result is
  [N * H + (N - 1) * s, 3 * W + 2 * s, 3].
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images of shape {images.shape}; [N, H, W, 3] expected")
  if labels.shape != images.shape[:3] or predictions.shape != images.shape[:3]:
    raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must both be "
                     f"[N, H, W] = {images.shape[:3]}")
  if images.shape[0] == 0:
    raise ValueError("prediction_grid needs at least one example")
  if separator < 0:
    raise ValueError(f"separator must be >= 0, got {separator}")
  num, height, width = labels.shape
  grid = np.empty((num * height + (num - 1) * separator, 3 * width + 2 * separator, 3),
                  dtype=np.uint8)
  grid[...] = SEPARATOR_COLOR
  pictures = unnormalize(images, mean, std)
  for row in range(num):
    top = row * (height + separator)
    panels = (pictures[row], colorize(labels[row], palette), colorize(predictions[row], palette))
    for column, panel in enumerate(panels):
      left = column * (width + separator)
      grid[top:top + height, left:left + width] = panel
  return grid


PANEL_TITLES = ("image", "ground truth", "prediction")


def save_prediction_picture(path: str, grid, panel_width: int, class_ids, palette=VOC_PALETTE,
                            class_names: dict | None = None, separator: int = 2) -> None:
  """Writes ``grid`` (``prediction_grid``'s picture) as a PNG with the panel titles above
  its three columns and a legend of ``class_ids`` (the classes it shows) in their colours,
  named by ``class_names`` (id -> name) where given; white is void or not seen yet."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  grid = np.asarray(grid)
  height, width = grid.shape[:2]
  scale = max(1.0, 384 / height)  # small test images are enlarged to stay readable
  figure = Figure(figsize=(width * scale / PLOT_DPI + 1.8, height * scale / PLOT_DPI + 0.4),
                  dpi=PLOT_DPI, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots()
  axes.imshow(grid, interpolation="nearest")
  axes.set_xticks([(column + 0.5) * panel_width + column * separator for column in range(3)])
  axes.set_xticklabels(PANEL_TITLES)
  axes.xaxis.tick_top()
  axes.tick_params(length=0)
  axes.set_yticks([])
  for spine in axes.spines.values():
    spine.set_visible(False)
  names = class_names or {}
  handles = [Patch(facecolor=np.asarray(palette[c]) / 255, edgecolor="black", linewidth=0.5,
                   label=f"{c} {names[c]}" if c in names else str(c))
             for c in sorted(int(c) for c in class_ids if c != IGNORE_LABEL)]
  handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.5,
                       label="void / not seen"))
  figure.legend(handles=handles, loc="outside right upper", fontsize="small",
                title="class", ncols=1 if len(handles) <= 24 else 2)
  _save_figure(figure, path)


def save_png(path: str, array) -> None:
  """Writes a uint8 [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA) array as a PNG file,
  atomically."""
  array = np.asarray(array)
  if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3
                                                          and array.shape[2] in (3, 4))):
    raise ValueError(f"uint8 [H, W], [H, W, 3] or [H, W, 4] expected, got {array.dtype} "
                     f"{array.shape}")
  image = Image.fromarray(array)
  storage.write_with(path, lambda file: image.save(file, format="PNG"))


# --- plots ---------------------------------------------------------------------------------------

def _percent_series(step_summaries: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values in %) of one curve, sorted by step; a missing or None value is NaN (a
  gap in the line)."""
  ordered = sorted(step_summaries, key=lambda summary: int(summary["step"]))
  steps = [int(summary["step"]) for summary in ordered]
  values = [np.nan if summary.get(key) is None else 100.0 * float(summary[key])
            for summary in ordered]
  return steps, values


def _new_figure(title: str):
  """A matplotlib Figure on an Agg canvas, and its axes set up for mIoU per step."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots()
  axes.set_title(title)
  axes.set_xlabel("step")
  axes.set_ylabel("mIoU (%)")
  axes.set_ylim(0, 100)
  axes.grid(True, alpha=0.3)
  return figure, axes


def _set_step_range(axes, step_lists) -> None:
  """x from the first to the last step with half a step of margin; a tick at every step
  (at most 20 steps) or at integer steps chosen by matplotlib."""
  from matplotlib.ticker import MaxNLocator, MultipleLocator

  steps = [step for steps in step_lists for step in steps]
  first, last = min(steps), max(steps)
  axes.set_xlim(first - 0.5, last + 0.5)
  axes.xaxis.set_major_locator(MultipleLocator(1) if last - first <= 20
                               else MaxNLocator(integer=True))


def _save_figure(figure, path: str) -> None:
  storage.write_with(path, lambda file: figure.savefig(file, format="png", dpi=PLOT_DPI))


def _miou_figure(step_summaries: list[dict], title: str):
  if not step_summaries:
    raise ValueError("miou_plot needs at least one step summary")
  figure, axes = _new_figure(title)
  for key, label in (("all", "all"), ("old", "old (step-0 classes)"), ("new", "new")):
    steps, values = _percent_series(step_summaries, key)
    # "all" on top: at step 0 it equals "old" (the same classes).
    axes.plot(steps, values, marker="o", label=label, zorder=3 if key == "all" else 2)
  _set_step_range(axes, [steps])
  axes.legend(loc="best")
  return figure


def miou_plot(step_summaries: list[dict], title: str, path: str) -> None:
  """Writes a PNG line plot of the mIoU "all", "old" and "new" (in %) after each step.

  ``step_summaries``: dicts as ``metrics.summarize_step`` returns (keys "step", "all",
  "old", "new", values as fractions; "new" is None at step 0 and left out of the line).
  The y axis runs from 0 to 100; the image is 640 x 400 pixels.
  """
  _save_figure(_miou_figure(step_summaries, title), path)


def _methods_figure(per_method: dict[str, list[dict]], title: str):
  from matplotlib.lines import Line2D

  methods = {name: summaries for name, summaries in per_method.items() if summaries}
  if not methods:
    raise ValueError("methods_plot needs at least one method with step summaries")
  figure, axes = _new_figure(title)
  method_handles = []
  for index, (name, summaries) in enumerate(methods.items()):
    color = f"C{index % 10}"
    for key, style in (("all", "-"), ("old", "--"), ("new", ":")):
      steps, values = _percent_series(summaries, key)
      line, = axes.plot(steps, values, linestyle=style, color=color,
                        marker="o" if key == "all" else None, markersize=4,
                        label=name if key == "all" else None)
      if key == "all":
        method_handles.append(line)
  _set_step_range(axes, [[int(summary["step"]) for summary in summaries]
                         for summaries in methods.values()])
  style_handles = [Line2D([], [], color="black", linestyle=style, label=label)
                   for style, label in (("-", "all"), ("--", "old"), (":", "new"))]
  # Both legends outside the axes, on the right (the constrained layout makes room), so
  # that they never hide a curve.
  figure.legend(handles=method_handles, loc="outside right upper", fontsize="small")
  figure.legend(handles=style_handles, loc="outside right lower", fontsize="small")
  return figure


def methods_plot(per_method: dict[str, list[dict]], title: str, path: str) -> None:
  """Writes one PNG comparing methods: per method (one colour each) its "all" mIoU after
  each step as a solid line, "old" dashed and "new" dotted, in %, y from 0 to 100.

  ``per_method``: method name -> step summaries as for ``miou_plot``; methods without
  summaries are left out. One legend names the methods, a second one the line styles.
  """
  _save_figure(_methods_figure(per_method, title), path)

"""The embedded synthetic segmentation dataset: VOC-shaped, procedurally generated.

Why it exists: an incremental experiment (step 0, then new classes step by step, with old
and future classes shown as background) must run end to end on a laptop CPU without a
download, and still show the effects the benchmark measures: plain fine-tuning forgets
the old classes through the background shift, while joint training of a small DeepLab
reaches a high mIoU.

Generative process of one sample (fully determined by ``(seed, split, index)``):

Classes. Class 0 is background; every foreground class ``c`` (1 .. num_classes-1) is a
fixed combination of three appearance attributes:

  * shape:   ellipse, rectangle, triangle, rhombus, cross                (5 values)
  * colour:  red, green, blue, yellow, magenta, cyan, orange            (7 values)
  * texture: solid, horizontal stripes, vertical stripes, rising diagonal
             stripes, falling diagonal stripes, checkerboard, dots,
             concentric rings                                            (8 values)

  with ``k = c - 1``: shape = k mod 5, colour = k mod 7, texture = k mod 8. The three
  counts are pairwise coprime, so by the Chinese remainder theorem the combinations are
  unique for all 5 * 7 * 8 = 280 values of ``k``, enough for every ``num_classes`` up to
  255 (uint8 labels with 255 = void). Attribute values are shared between classes, so
  classes can be confused on one attribute: among the 20 VOC-sized classes every value
  is reused and any two classes differ in at least two attributes; among 150 ADE-sized
  classes some pairs differ in a single attribute. A class looks the same whatever
  ``num_classes`` is. Textures alternate the class colour with a dark shade of it, are
  aligned with the image axes (so stripe direction stays meaningful) and have periods of
  6-12 px at 128 px (scaled with the image size), coarse enough to survive the 1/16
  resolution feature maps.

Nuisance factors per object instance (not class-defining): size (major axis 20-50 % of
the image side, so objects cover several cells of a 1/16 resolution feature map),
rotation within +-30 degrees, aspect ratio, brightness and colour jitter, texture period
and phase, position. On average about 11 % of the pixels are foreground and 2 % void
(at 128 px).

Layout. An image holds 1-3 objects of distinct classes (probabilities 0.40 / 0.35 /
0.25). The first class is uniform; each further class comes, with probability 0.5, from
the first class's fixed "context group" (classes with equal ``(c - 1) mod 4``, a
co-occurrence structure that spans incremental steps), otherwise uniformly from the
remaining classes. Co-occurring classes are what makes old and future classes appear as
background in an incremental step's labels. Objects may partly overlap (later drawn on
top); centres are kept apart enough that no object is fully hidden, and an object that
cannot be placed is dropped.

Background (label 0). A linear gradient between two low-saturation colours, smooth
low-frequency colour noise, and distractors that are also labelled background: thin
straight lines and small blobs (smaller than any object) in desaturated colours. Finally
moderate per-pixel noise (standard deviation 3-9 grey levels) is added to the whole image.

Void. As in Pascal VOC, object contours carry a thin void (255) border in the label
only: 1 px on the object side of each contour, or 2 px straddling it (chosen per image).

Random streams. The layout (classes, geometry, border width) and the appearance
(background, distractors, colours, textures, noise) come from two independent generators
seeded with ``[seed, split_id, index, stream]``, so ``read_label`` builds the label
without rendering the image.
"""

import dataclasses
import os
import time

import numpy as np
from PIL import Image

from gsc_jax import errors

VOID_LABEL = 255
SPLITS = {"train": 0, "val": 1}
REFERENCE_IMAGE_SIZE = 128  # Pixel sizes below (periods, line widths) are given at this size.

SHAPES = ("ellipse", "rectangle", "triangle", "rhombus", "cross")
COLOURS = {  # name -> RGB; saturated, so objects stand out from the greyish background.
    "red": (215, 35, 35),
    "green": (40, 175, 60),
    "blue": (45, 80, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 215),
    "orange": (240, 130, 20),
}
TEXTURES = ("solid", "horizontal-striped", "vertical-striped", "rising-diagonal-striped",
            "falling-diagonal-striped", "checkered", "dotted", "ringed")
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], np.float32)

OBJECT_COUNT_PROBS = (0.40, 0.35, 0.25)  # for 1, 2, 3 objects per image
CO_OCCURRENCE_PROB = 0.5
NUM_CONTEXT_GROUPS = 4
OBJECT_SIZE_RANGE = (0.2, 0.5)  # object extent (major axis) as a fraction of the image side
MAX_ROTATION = np.deg2rad(30.0)
# Minor / major half-size per shape. The rhombus stays elongated so that it never looks
# like a rotated square.
ASPECT_RANGES = {
    "ellipse": (0.6, 1.0),
    "rectangle": (0.6, 1.0),
    "triangle": (1.0, 1.0),  # always equilateral
    "rhombus": (0.55, 0.75),
    "cross": (0.8, 1.0),
}
MIN_CENTRE_DISTANCE = 0.7  # times the sum of the two half-sizes: overlap only partly
PLACEMENT_TRIES = 25
TEXTURE_PERIOD_RANGE = (6.0, 12.0)  # px at the reference size
DARK_SHADE = 0.35  # the texture's second colour = this times the class colour
BACKGROUND_GRID = 5  # nodes per side of the coarse grid the background is built on
NOISE_STD_RANGE = (3.0, 9.0)  # per-pixel noise, in 0..255 intensity units


def class_attributes(num_classes: int) -> np.ndarray:
  """Attribute indices [num_classes - 1, 3] (shape, colour, texture) of classes 1...

  Row ``c - 1`` describes class ``c``. Raises if two classes would share all three.
  """
  _check_num_classes(num_classes)
  k = np.arange(num_classes - 1)
  attributes = np.stack([k % len(SHAPES), k % len(COLOUR_NAMES), k % len(TEXTURES)], axis=1)
  num_unique = len({tuple(row) for row in attributes.tolist()})
  if num_unique != len(attributes):  # cannot happen below 5 * 7 * 8 classes; checked anyway
    raise AssertionError("attribute combinations must be unique per class")
  return attributes


def describe_classes(num_classes: int) -> list[str]:
  """One description per class id, e.g. ``"red horizontal-striped ellipse"``; 0 = background."""
  descriptions = ["background"]
  for shape, colour, texture in class_attributes(num_classes).tolist():
    descriptions.append(f"{COLOUR_NAMES[colour]} {TEXTURES[texture]} {SHAPES[shape]}")
  return descriptions


def _check_num_classes(num_classes: int) -> None:
  if not 2 <= num_classes <= VOID_LABEL:
    raise errors.InputError(f"num_classes must be in [2, {VOID_LABEL}] (uint8 labels, "
                     f"{VOID_LABEL} = void), got {num_classes}")


# ---------------------------------------------------------------------------------------
# Layout: which classes, where, how big (the "layout" random stream).


@dataclasses.dataclass(frozen=True)
class PlacedObject:
  """One object instance: its class and geometry in pixels."""
  class_id: int
  shape: str
  centre_y: float
  centre_x: float
  half_size: float  # half of the object's extent along its major axis
  aspect: float  # minor / major half-size
  rotation: float  # radians


def _sample_classes(rng: np.random.Generator, num_classes: int) -> list[int]:
  """Distinct classes of one image: first uniform, the rest partly from its context group."""
  num_foreground = num_classes - 1
  count = rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS) + 1
  count = min(count, num_foreground)
  all_classes = np.arange(1, num_classes)
  chosen = [int(rng.integers(1, num_classes))]
  context_group = (all_classes - 1) % NUM_CONTEXT_GROUPS == (chosen[0] - 1) % NUM_CONTEXT_GROUPS
  while len(chosen) < count:
    unused = ~np.isin(all_classes, chosen)
    same_context = all_classes[unused & context_group]
    from_context = rng.random() < CO_OCCURRENCE_PROB and len(same_context) > 0
    candidates = same_context if from_context else all_classes[unused]
    chosen.append(int(rng.choice(candidates)))
  return chosen


def _place_object(rng, class_id, shape, image_size, placed) -> PlacedObject | None:
  """Samples size and pose; retries the position until it overlaps the others only partly."""
  half_size = 0.5 * image_size * rng.uniform(*OBJECT_SIZE_RANGE)
  aspect = rng.uniform(*ASPECT_RANGES[shape])
  rotation = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
  # Centres stay inside so that at most a small part of an object leaves the image.
  low, high = 0.8 * half_size, image_size - 0.8 * half_size
  for _ in range(PLACEMENT_TRIES):
    centre_y, centre_x = rng.uniform(low, high, size=2)
    if all(np.hypot(centre_y - other.centre_y, centre_x - other.centre_x)
           >= MIN_CENTRE_DISTANCE * (half_size + other.half_size) for other in placed):
      return PlacedObject(class_id, shape, float(centre_y), float(centre_x),
                          float(half_size), float(aspect), float(rotation))
  return None


def sample_layout(rng: np.random.Generator, attributes: np.ndarray, image_size: int):
  """The objects of one image in drawing order, and the void border width (1 or 2 px).

  ``attributes`` is ``class_attributes(num_classes)``.
  """
  objects = []
  for class_id in _sample_classes(rng, len(attributes) + 1):
    shape = SHAPES[attributes[class_id - 1, 0]]
    placed = _place_object(rng, class_id, shape, image_size, objects)
    if placed is not None:
      objects.append(placed)
  void_width = int(rng.integers(1, 3))
  return objects, void_width


# ---------------------------------------------------------------------------------------
# Masks: each shape evaluated on the coordinate grid of its bounding box only (fast).


def _bounding_box(centre_y, centre_x, radius, image_size):
  """Slices of the square of half-side ``radius`` around the centre, clipped to the image."""
  top = max(int(np.floor(centre_y - radius)), 0)
  bottom = min(int(np.ceil(centre_y + radius)) + 1, image_size)
  left = max(int(np.floor(centre_x - radius)), 0)
  right = min(int(np.ceil(centre_x + radius)) + 1, image_size)
  return slice(top, bottom), slice(left, right)


def _box_coordinates(box):
  """Broadcastable pixel-centre coordinates (ys [h, 1], xs [1, w]) of a bounding box."""
  rows, cols = box
  ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
  xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
  return ys, xs


def _shape_mask(shape: str, u, v, half_size: float, aspect: float) -> np.ndarray:
  """Inside test of a shape in its own frame (u along the major axis, v across it)."""
  major, minor = half_size, half_size * aspect
  if shape == "ellipse":
    return (u / major) ** 2 + (v / minor) ** 2 <= 1.0
  if shape == "rectangle":
    return (np.abs(u) <= major) & (np.abs(v) <= minor)
  if shape == "rhombus":
    return np.abs(u) / major + np.abs(v) / minor <= 1.0
  if shape == "triangle":
    # Equilateral, pointing along -v ("up" before rotation), as three half-planes; this
    # inradius puts the vertices 1.1 half-sizes from the centre, about the others' extent.
    inradius = 0.55 * major
    inside = v <= inradius
    for angle in (np.pi / 6, 5 * np.pi / 6):
      inside &= u * np.cos(angle) - v * np.sin(angle) <= inradius
    return inside
  if shape == "cross":
    arm = 0.35 * major
    along_u = (np.abs(u) <= major) & (np.abs(v) <= arm)
    along_v = (np.abs(u) <= arm) & (np.abs(v) <= minor)
    return along_u | along_v
  raise errors.InputError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def object_mask(obj: PlacedObject, image_size: int):
  """(bounding box, boolean mask over that box) of one object."""
  # 1.15 covers the triangle's circumradius (1.1 half-sizes); other shapes fit in 1.0.
  box = _bounding_box(obj.centre_y, obj.centre_x, 1.15 * obj.half_size, image_size)
  ys, xs = _box_coordinates(box)
  dy, dx = ys - obj.centre_y, xs - obj.centre_x
  cos, sin = np.cos(obj.rotation), np.sin(obj.rotation)
  u = dx * cos + dy * sin
  v = -dx * sin + dy * cos
  return box, _shape_mask(obj.shape, u, v, obj.half_size, obj.aspect)


# ---------------------------------------------------------------------------------------
# Label.


def _add_void_border(label: np.ndarray, width: int) -> np.ndarray:
  """Marks object contours as void: the object side (width 1) or both sides (width 2).

  Width 0 leaves the label unchanged (the clean label, for checks).
  """
  if width == 0:
    return label
  contour = np.zeros(label.shape, bool)
  for axis in (0, 1):
    differs = np.diff(label, axis=axis) != 0
    before = [slice(None), slice(None)]
    after = [slice(None), slice(None)]
    before[axis], after[axis] = slice(None, -1), slice(1, None)
    if width >= 2:
      contour[tuple(before)] |= differs
      contour[tuple(after)] |= differs
    else:  # Only pixels that belong to an object (every contour touches one).
      contour[tuple(before)] |= differs & (label[tuple(before)] != 0)
      contour[tuple(after)] |= differs & (label[tuple(after)] != 0)
  label[contour] = VOID_LABEL
  return label


def render_label(objects, masks, void_width: int, image_size: int) -> np.ndarray:
  """uint8 label [H, W]: objects painted in order, then the void contours."""
  label = np.zeros((image_size, image_size), np.uint8)
  for obj, (box, mask) in zip(objects, masks):
    label[box][mask] = obj.class_id
  return _add_void_border(label, void_width)


# ---------------------------------------------------------------------------------------
# Image (the "appearance" random stream).


def _interpolation_matrix(size: int, coarse: int) -> np.ndarray:
  """[size, coarse] linear interpolation weights from a coarse grid to ``size`` pixels."""
  position = np.linspace(0, coarse - 1, size)
  lower = np.minimum(np.floor(position).astype(int), coarse - 2)
  fraction = position - lower
  weights = np.zeros((size, coarse), np.float32)
  weights[np.arange(size), lower] = 1 - fraction
  weights[np.arange(size), lower + 1] = fraction
  return weights


def _greyish_colour(rng, low=50.0, high=200.0, tint=30.0) -> np.ndarray:
  """A random low-saturation colour (grey level plus a small tint)."""
  return rng.uniform(low, high) + rng.uniform(-tint, tint, size=3)


def _background(rng, image_size: int) -> np.ndarray:
  """float32 [H, W, 3]: a two-colour linear gradient plus smooth low-frequency blotches.

  Both are built on a coarse grid and upsampled bilinearly (bilinear interpolation
  reproduces a linear gradient exactly), which is much cheaper than full-size arithmetic.
  """
  coarse = BACKGROUND_GRID
  nodes = np.linspace(0.0, 1.0, coarse)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = nodes[None, :] * np.cos(angle) + nodes[:, None] * np.sin(angle)
  ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())  # 0 .. 1 across the image
  start, end = _greyish_colour(rng), _greyish_colour(rng)
  grid = start + (end - start) * ramp[..., None]
  grid += rng.normal(0.0, 18.0, size=(coarse, coarse, 3))
  grid = grid.astype(np.float32)
  interpolate = _interpolation_matrix(image_size, coarse)
  image = np.empty((image_size, image_size, 3), np.float32)
  for channel in range(3):  # separable bilinear upsampling: two small matrix products
    image[..., channel] = interpolate @ grid[..., channel] @ interpolate.T
  return image


def _desaturated_colour(rng) -> np.ndarray:
  """A random colour mixed half-way with grey: visible clutter, but duller than objects."""
  colour = rng.uniform(0, 255, size=3)
  return 0.5 * colour + 0.5 * colour.mean()


def _draw(image, box, mask, colour) -> None:
  """Paints ``colour`` (RGB, or [h, w, 3] over the box) into ``image`` where ``mask``."""
  region = image[box]
  region[mask] = np.broadcast_to(colour, region.shape)[mask]


def _segment_box(y0, x0, y1, x1, margin, image_size):
  """Slices of the bounding box of a segment widened by ``margin``, clipped to the image."""
  top = max(int(np.floor(min(y0, y1) - margin)), 0)
  bottom = min(int(np.ceil(max(y0, y1) + margin)) + 1, image_size)
  left = max(int(np.floor(min(x0, x1) - margin)), 0)
  right = min(int(np.ceil(max(x0, x1) + margin)) + 1, image_size)
  return slice(top, bottom), slice(left, right)


def _draw_distractors(rng, image, scale: float) -> None:
  """Background clutter labelled 0: thin straight lines and small blobs."""
  image_size = image.shape[0]
  for _ in range(rng.integers(2, 6)):
    (y0, x0), (y1, x1) = rng.uniform(0, image_size, size=(2, 2))
    half_width = 0.5 * rng.uniform(1.0, 2.5) * scale
    box = _segment_box(y0, x0, y1, x1, half_width, image_size)
    ys, xs = _box_coordinates(box)
    # Distance from every pixel to the segment (projection clamped to its ends).
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    mask = (ys - y0 - t * dy) ** 2 + (xs - x0 - t * dx) ** 2 <= half_width ** 2
    _draw(image, box, mask, _desaturated_colour(rng))
  for _ in range(rng.integers(2, 7)):
    centre_y, centre_x = rng.uniform(0, image_size, size=2)
    # At most 0.1 of the side across, below the smallest object (0.2).
    radius = rng.uniform(0.015, 0.05) * image_size
    box = _bounding_box(centre_y, centre_x, radius, image_size)
    ys, xs = _box_coordinates(box)
    shape = SHAPES[rng.integers(0, 2)]  # round or square blobs
    mask = _shape_mask(shape, xs - centre_x, ys - centre_y, radius, rng.uniform(0.6, 1.0))
    _draw(image, box, mask, _desaturated_colour(rng))


def _texture_mask(texture: str, ys, xs, period: float, phase_y: float, phase_x: float,
                  centre_y: float, centre_x: float) -> np.ndarray:
  """Where the texture shows its dark shade, on image-aligned coordinates of a box."""
  y, x = ys + phase_y, xs + phase_x
  half = 0.5 * period
  if texture == "solid":
    return np.zeros(np.broadcast_shapes(ys.shape, xs.shape), bool)
  if texture == "horizontal-striped":
    return np.broadcast_to(y % period < half, np.broadcast_shapes(ys.shape, xs.shape))
  if texture == "vertical-striped":
    return np.broadcast_to(x % period < half, np.broadcast_shapes(ys.shape, xs.shape))
  if texture == "rising-diagonal-striped":
    return (x + y) / np.sqrt(2) % period < half
  if texture == "falling-diagonal-striped":
    return (x - y) / np.sqrt(2) % period < half
  if texture == "checkered":
    return (np.floor(y / half) + np.floor(x / half)) % 2 == 0
  if texture == "dotted":
    return (y % period - half) ** 2 + (x % period - half) ** 2 <= (0.3 * period) ** 2
  if texture == "ringed":
    return np.hypot(ys - centre_y, xs - centre_x) % period < half
  raise errors.InputError(f"unknown texture {texture!r}; valid textures: {', '.join(TEXTURES)}")


def _draw_object(rng, image, obj: PlacedObject, box, mask, attributes, scale: float) -> None:
  """Paints one object: class colour (jittered) alternating with its dark shade."""
  _, colour_index, texture_index = attributes[obj.class_id - 1]
  colour = PALETTE[colour_index] * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, size=3)
  period = rng.uniform(*TEXTURE_PERIOD_RANGE) * scale
  phase_y, phase_x = rng.uniform(0, period, size=2)
  ys, xs = _box_coordinates(box)
  dark = _texture_mask(TEXTURES[texture_index], ys, xs, period, phase_y, phase_x,
                       obj.centre_y, obj.centre_x)
  pixels = np.where(dark[..., None], DARK_SHADE * colour, colour).astype(np.float32)
  _draw(image, box, mask, pixels)


def _add_pixel_noise(rng, image) -> None:
  """Adds zero-mean uniform noise of a random standard deviation to every pixel.

  Uniform (from random bytes) rather than Gaussian because it is several times cheaper;
  at this strength only the standard deviation matters visually.
  """
  noise_std = rng.uniform(*NOISE_STD_RANGE)
  # A uniform on [-a, a] has standard deviation a / sqrt(3).
  half_range = noise_std * np.sqrt(3.0)
  random_bytes = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
  image += random_bytes * np.float32(2 * half_range / 255) - np.float32(half_range)


def render_image(rng, objects, masks, attributes: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 RGB [H, W, 3]: background, clutter, the objects in order, pixel noise."""
  scale = max(image_size / REFERENCE_IMAGE_SIZE, 0.5)
  image = _background(rng, image_size)
  _draw_distractors(rng, image, scale)
  for obj, (box, mask) in zip(objects, masks):
    _draw_object(rng, image, obj, box, mask, attributes, scale)
  _add_pixel_noise(rng, image)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# The data source.


class SyntheticSegmentation:
  """Random-access source (grain RandomAccessDataSource protocol).

  ``source[i]`` is ``{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W], "name": str}``
  with label values in [0, num_classes) plus 255 (void), generated on the fly and
  identical on every call for the same (seed, split, index).
  """

  def __init__(self, split: str, num_images: int, num_classes: int = 21,
               image_size: int = 128, seed: int = 0):
    if split not in SPLITS:
      raise errors.InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if num_images < 0:
      raise errors.InputError(f"num_images must be >= 0, got {num_images}")
    if image_size < 16:
      raise errors.InputError(f"image_size must be >= 16, got {image_size}")
    _check_num_classes(num_classes)
    self.split = split
    self.num_images = int(num_images)
    self.num_classes = int(num_classes)
    self.image_size = int(image_size)
    self.seed = int(seed)
    self._attributes = class_attributes(num_classes)  # validates uniqueness once

  def __len__(self) -> int:
    return self.num_images

  def __repr__(self) -> str:
    return (f"SyntheticSegmentation(split={self.split!r}, num_images={self.num_images}, "
            f"num_classes={self.num_classes}, image_size={self.image_size}, seed={self.seed})")

  def name(self, index: int) -> str:
    return f"synth_{self.split}_{index:06d}"

  def fingerprint(self) -> None:
    """None: the labels come from code, so the step lists are never cached on disk."""
    return None

  def _rng(self, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, SPLITS[self.split], index, stream])

  def layout(self, index: int):
    """(index, objects in drawing order, their (box, mask) pairs, void border width)."""
    index = int(index)
    if not 0 <= index < self.num_images:
      raise IndexError(f"index {index} out of range for {self.num_images} images")
    objects, void_width = sample_layout(self._rng(index, 0), self._attributes, self.image_size)
    masks = [object_mask(obj, self.image_size) for obj in objects]
    return index, objects, masks, void_width

  def read_label(self, index: int) -> np.ndarray:
    """The label of image ``index`` only (the image itself is not rendered)."""
    _, objects, masks, void_width = self.layout(index)
    return render_label(objects, masks, void_width, self.image_size)

  def __getitem__(self, index: int) -> dict:
    index, objects, masks, void_width = self.layout(index)
    label = render_label(objects, masks, void_width, self.image_size)
    image = render_image(self._rng(index, 1), objects, masks, self._attributes, self.image_size)
    return {"image": image, "label": label, "name": self.name(index)}


# ---------------------------------------------------------------------------------------
# Pascal VOC layout on disk.


def write_voc_layout(root: str, num_train: int, num_val: int, num_classes: int = 21,
                     image_size: int = 128, seed: int = 0) -> None:
  """Writes the dataset in the Pascal VOC layout:
     root/JPEGImages/<name>.jpg  (RGB JPEG, quality 95, no chroma subsampling)
     root/SegmentationClassAug/<name>.png  (8-bit single-channel PNG, mode 'L', raw class
       ids, 255 void)
     root/ImageSets/Segmentation/train_aug.txt and val.txt  (one image id per line)
  Names like 'synth_train_000123' / 'synth_val_000045'. The command line is
  ``python -m gsc_jax.tools.write_synthetic_voc``."""
  image_dir = os.path.join(root, "JPEGImages")
  label_dir = os.path.join(root, "SegmentationClassAug")
  list_dir = os.path.join(root, "ImageSets", "Segmentation")
  for directory in (image_dir, label_dir, list_dir):
    os.makedirs(directory, exist_ok=True)
  for split, num_images, list_name in (("train", num_train, "train_aug.txt"),
                                       ("val", num_val, "val.txt")):
    source = SyntheticSegmentation(split, num_images, num_classes, image_size, seed)
    names = []
    start = time.time()
    for index in range(num_images):
      sample = source[index]
      Image.fromarray(sample["image"]).save(
          os.path.join(image_dir, sample["name"] + ".jpg"), quality=95,
          subsampling=0)  # full-resolution colour: thin textures keep their colours
      Image.fromarray(sample["label"]).save(os.path.join(label_dir, sample["name"] + ".png"))
      names.append(sample["name"])
      if (index + 1) % 250 == 0 or index + 1 == num_images:
        print(f"  {split}: {index + 1}/{num_images} images ({time.time() - start:.1f} s)",
              flush=True)
    with open(os.path.join(list_dir, list_name), "w") as list_file:
      list_file.writelines(name + "\n" for name in names)

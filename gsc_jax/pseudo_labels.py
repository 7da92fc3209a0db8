"""Pseudo-labels for old classes hidden in the background (PLOP, docs/algorithm.md 4) and GSC's
prototypes and prototypical re-labelling (docs/algorithm.md 5.3).

Every function here is pure and works on the global batch: under ``jax.jit`` over a
batch-sharded array, the sums below are sums over every device's pixels.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import losses
from gsc_jax.tasks import IGNORE_LABEL
from gsc_jax import errors

ENTROPY_BINS = 100  # PLOP's histogram resolution for entropies


# --- PLOP: entropy pseudo-labels -----------------------------------------------------------

def normalized_entropy(teacher_logits, num_classes: int):
  """PLOP's per-pixel uncertainty of the teacher (its released code, kept as is):

  ``H = -(1 / log K_old) * mean_c q_c log(q_c + 1e-8)`` with ``q = softmax(z_old)``, then
  divided by ``log K`` (K = classes after this step). The mean over channels and the double
  normalisation make the values small; the thresholds are computed on the same scale.
  """
  num_old_classes = teacher_logits.shape[-1]
  probabilities = jax.nn.softmax(teacher_logits, axis=-1)
  entropy = -jnp.mean(probabilities * jnp.log(probabilities + 1e-8), axis=-1)
  return entropy / np.log(num_old_classes + 1e-8) / np.log(num_classes)


def entropy_histogram(labels, teacher_logits, num_classes: int):
  """Counts [K_old, 100] of (teacher argmax, entropy bin) over pixels labelled background."""
  num_old_classes = teacher_logits.shape[-1]
  background = labels == 0
  entropy = normalized_entropy(teacher_logits, num_classes)
  bins = jnp.clip((entropy * ENTROPY_BINS).astype(jnp.int32), 0, ENTROPY_BINS - 1)
  argmax = jnp.argmax(teacher_logits, axis=-1)
  # Other pixels get an out-of-range index, dropped by the scatter (-1 would wrap around).
  flat_index = jnp.where(background, argmax * ENTROPY_BINS + bins,
                         num_old_classes * ENTROPY_BINS).reshape(-1)
  counts = jnp.zeros(num_old_classes * ENTROPY_BINS, jnp.int32).at[flat_index].add(
      1, mode="drop")
  return counts.reshape(num_old_classes, ENTROPY_BINS)


def histogram_thresholds(histograms: np.ndarray, floor: float) -> np.ndarray:
  """PLOP's released ``find_median`` on the histograms, reproduced with its quirk.

  Scanning the bins for the one holding the half-count, the running sum adds the bin INDEX
  instead of the bin count, so the scan stops at the first bin whose count reaches about
  half the total: usually bin 0, giving a small threshold. Each threshold is floored at
  ``floor`` (0.001); a class the teacher never predicted gets the floor. (PLOP divides by
  the chosen bin's count even when it is 0; here that case returns the bin's lower edge.)
  """
  num_bins = histograms.shape[1]
  thresholds = np.zeros(len(histograms), np.float64)
  for class_index, histogram in enumerate(histograms):
    total = histogram.sum()
    if total <= 0:
      continue
    half, running_sum = total / 2, 0.0
    for bin_index in range(num_bins):
      if running_sum <= half <= running_sum + histogram[bin_index]:
        break
      running_sum += bin_index  # sic: the released code adds the index, not the count
    lower_edge = bin_index / num_bins
    if histogram[bin_index] > 0:
      thresholds[class_index] = (lower_edge
                                 + (half - running_sum) / histogram[bin_index] / num_bins)
    elif half == running_sum:  # PLOP: 0 / 0 = NaN; the bin's lower edge here
      thresholds[class_index] = lower_edge
    # else the scan ran past the half-count onto an empty last bin: PLOP gets -inf, i.e. the
    # floor below.
  return np.maximum(thresholds, floor).astype(np.float32)


def median_thresholds(entropies: np.ndarray, argmax: np.ndarray, num_old_classes: int,
                      floor: float) -> np.ndarray:
  """The paper's rule: per class, the exact median entropy of the background pixels the
  teacher assigns to it (``floor`` for a class it never predicts), floored at ``floor``."""
  thresholds = np.full(num_old_classes, floor, np.float32)
  for class_index in range(num_old_classes):
    values = entropies[argmax == class_index]
    if values.size:
      thresholds[class_index] = max(float(np.median(values)), floor)
  return thresholds


def entropy_pseudo_labels(labels, teacher_logits, thresholds, num_classes: int):
  """PLOP's pseudo-labels and per-image factor nu.

  A pixel labelled 0 becomes the teacher's argmax c when ``H < thresholds[c]``, else 255;
  other pixels keep their label. ``nu_b = accepted background pixels / (background pixels
  + 1e-6)`` (so an image without background pixels gets nu = 0, as in PLOP's code).
  Returns (labels [B, H, W], nu [B], accepted [B, H, W] bool).
  """
  background = labels == 0
  argmax = jnp.argmax(teacher_logits, axis=-1)
  entropy = normalized_entropy(teacher_logits, num_classes)
  accepted = background & (entropy < thresholds[argmax])
  new_labels = jnp.where(background, jnp.where(accepted, argmax, IGNORE_LABEL), labels)
  return new_labels, adaptive_factor(accepted, background), accepted


def adaptive_factor(accepted, background):
  """PLOP's per-image nu [B] = accepted background pixels / (background pixels + 1e-6)."""
  nu = jnp.sum(accepted, axis=(1, 2)) / (jnp.sum(background, axis=(1, 2)) + 1e-6)
  return nu.astype(jnp.float32)


# --- GSC: prototypes and prototypical re-labelling -----------------------------------------

def resize_labels_nearest(labels, height: int, width: int):
  """Labels [B, H, W] -> [B, height, width], nearest neighbour at pixel centres."""
  rows = (jnp.arange(height) + 0.5) * labels.shape[1] / height
  columns = (jnp.arange(width) + 0.5) * labels.shape[2] / width
  return labels[:, rows.astype(jnp.int32)][:, :, columns.astype(jnp.int32)]


def prototype_sums(features, labels, num_classes: int):
  """Per class c < K: (sum of the feature vectors of pixels labelled c, their count), at
  feature resolution (labels resized by nearest). Sums over the global batch."""
  small_labels = resize_labels_nearest(labels, features.shape[1], features.shape[2])
  one_hot = losses.one_hot_targets(small_labels, num_classes)  # [B, h, w, K]
  sums = jnp.einsum("bhwk,bhwc->kc", one_hot, features.astype(jnp.float32))
  return sums, jnp.sum(one_hot, axis=(0, 1, 2))


def updated_prototypes(previous_prototypes, previous_seen, sums, counts):
  """Class means where the class has pixels in this step's data; stale prototypes (and
  their ``seen`` flags) are kept for the others. Shapes: [K, C], [K] (previous ones may
  have fewer classes: they are padded)."""
  num_classes = sums.shape[0]
  prototypes = np.zeros_like(sums)
  seen = np.zeros(num_classes, bool)
  if previous_prototypes is not None:
    prototypes[:len(previous_prototypes)] = previous_prototypes
    seen[:len(previous_seen)] = previous_seen
  present = counts > 0
  prototypes[present] = sums[present] / counts[present, None]
  return prototypes, seen | present


def prototype_similarity(features, prototypes, similarity: str):
  """[B, h, w, C] x [K_old, C] -> [B, h, w, K_old]: cosine (default) or negative squared
  Euclidean distance."""
  if similarity == "cosine":
    features = features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + 1e-8)
    prototypes = prototypes / (jnp.linalg.norm(prototypes, axis=-1, keepdims=True) + 1e-8)
    return jnp.einsum("bhwc,kc->bhwk", features, prototypes)
  if similarity == "euclidean":
    return -jnp.sum(jnp.square(features[..., None, :] - prototypes), axis=-1)
  raise errors.InputError(f"unknown gsc.similarity {similarity!r}; valid: cosine, euclidean")


def prototype_relabel(labels, teacher_logits, teacher_features, prototypes, prototype_seen,
                      tau: float, theta: float, similarity: str):
  """GSC's prototypical re-labelling of the pixels labelled 0 (docs/algorithm.md 5.3).

  ``P`` = teacher softmax over K_old; ``kappa = softmax_c(sim(f, prototype_c) / tau)`` over
  the old classes that have a prototype, computed at feature resolution and resized
  bilinearly to the labels; ``s = kappa * P / sum(kappa * P)``. With ``c = argmax s``: c = 0
  keeps 0; c >= 1 with ``s_c >= theta`` becomes c; otherwise 255. Pixels not labelled 0
  (new classes, void) are never touched. Returns (labels, accepted [B, H, W] bool).
  """
  num_old_classes = teacher_logits.shape[-1]
  scores = prototype_similarity(teacher_features, prototypes[:num_old_classes], similarity)
  # A class without a prototype gets kappa = 0 (a large negative score, not -inf: no NaN).
  scores = jnp.where(prototype_seen[:num_old_classes], scores / tau, -1e9)
  kappa = jax.nn.softmax(scores, axis=-1)
  batch, height, width = labels.shape
  kappa = jax.image.resize(kappa, (batch, height, width, num_old_classes), "bilinear",
                           antialias=False)
  combined = kappa * jax.nn.softmax(teacher_logits, axis=-1)
  combined = combined / jnp.maximum(jnp.sum(combined, axis=-1, keepdims=True), 1e-12)
  best = jnp.argmax(combined, axis=-1)
  best_score = jnp.max(combined, axis=-1)
  accepted_class = (best >= 1) & (best_score >= theta)
  relabelled = jnp.where(best == 0, 0, jnp.where(accepted_class, best, IGNORE_LABEL))
  background = labels == 0
  accepted = background & (relabelled != IGNORE_LABEL)
  return jnp.where(background, relabelled, labels), accepted

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


def histogram_thresholds(histograms: np.ndarray, floor: float,
                         quantile: float = 0.5) -> np.ndarray:
  """PLOP's released ``find_median`` on the histograms [K_old, 100], reproduced exactly
  (docs/algorithm.md 4), with FISS's generalisation from the half-count to the
  ``quantile``-count ``target = quantile * N_c`` (N_c = the class's count).

  Scan ``i = 0..99`` with ``lower = i / 100`` and ``bin = int(lower * 100)``; stop when
  ``running <= target <= running + h[bin]``, else ``running += lower * 100``. Then
  ``threshold = lower + (target - running) / h[bin] / 100``; ``max(threshold, floor)``.
  The released code's quirks are kept, in float32 as in PyTorch:

  - the running sum adds the scan index, not the bin's count, so the scan stops at the
    first bin whose count reaches about the target: usually bin 0, a small threshold;
  - ``int(i / 100 * 100)`` is 28 at i = 29 and 56, 57 at i = 57, 58 (float rounding): that
    bin is read both in the stop test and in the division;
  - a scan stopping on an empty bin gives 0 / 0 = NaN, which ``max(NaN, floor)`` keeps:
    every pixel the teacher assigns to that class is then rejected;
  - a scan that never stops ends with ``lower = 0.99``, bin 99 and ``running`` = 4950 (the
    sum of the indices 0..99): a target below it gives -inf on an empty bin 99, or a
    negative value, both floored; a target above it (a class of more than 9,900 pixels
    at the median, no bin of which reaches the target) gives +inf on an empty bin 99,
    which accepts EVERY pixel of that class: the frequent case of a large class spread
    over a few low bins;
  - a class the teacher never predicts gets the floor.
  """
  num_bins = histograms.shape[1]
  thresholds = np.zeros(len(histograms), np.float32)
  for class_index, histogram in enumerate(np.asarray(histograms)):
    total = histogram.sum()
    value = np.float32(0.0)
    if total > 0:
      target = np.float32(total) * np.float32(quantile)
      running_sum = 0.0  # a Python float, as in the released code
      for scan_index in range(num_bins):
        lower_border = scan_index / num_bins
        bin_index = int(lower_border * num_bins)  # sic: 28 at scan index 29
        # PyTorch casts the Python float and the count to float32 before adding.
        upper = np.float32(running_sum) + np.float32(histogram[bin_index])
        if np.float32(running_sum) <= target <= upper:
          break
        running_sum += lower_border * num_bins  # sic: the index, not the count
      with np.errstate(divide="ignore", invalid="ignore"):
        value = np.float32(lower_border) + (
            (target - np.float32(running_sum)) / np.float32(histogram[bin_index])
            * np.float32(1 / num_bins))
    # Python's max(value, floor), as released: NaN stays NaN, -inf becomes the floor.
    thresholds[class_index] = floor if floor > value else value
  return thresholds


def quantile_of_epoch(epoch: int, start: float, per_epoch: float, maximum: float) -> float:
  """The entropy-threshold quantile of an epoch, ``pi_e = min(start + per_epoch * e,
  maximum)`` (FISS: 0.2, 0.1, 0.8; PLOP: 0.5 at every epoch)."""
  return min(start + per_epoch * epoch, maximum)


def median_thresholds(entropies: np.ndarray, argmax: np.ndarray, num_old_classes: int,
                      floor: float, quantile: float = 0.5) -> np.ndarray:
  """The paper's rule: per class, the exact median (or ``quantile``) of the entropies of
  the background pixels the teacher assigns to it (``floor`` for a class it never
  predicts), floored at ``floor``."""
  thresholds = np.full(num_old_classes, floor, np.float32)
  for class_index in range(num_old_classes):
    values = entropies[argmax == class_index]
    if values.size:
      thresholds[class_index] = max(float(np.quantile(values, quantile)), floor)
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
#
# Two reconstructions live here (docs/algorithm.md 5.3). The first (prototypes from the
# previous step's final model: prototype_sums, updated_prototypes; decisions with theta:
# prototype_relabel) is kept so that earlier results can be reproduced. The second follows
# RDP's released code (BladeDancer957/INER_RDP, src/trainer.py): prototypes from the teacher
# at the start of the step (teacher_prototype_sums), plain Euclidean distance, and the
# decisions filter_then_relabel / rdp_relabel. Both use prototype_scores.

def resize_labels_nearest(labels, height: int, width: int):
  """Labels [B, H, W] -> [B, height, width], nearest neighbour at pixel centres."""
  rows = (jnp.arange(height) + 0.5) * labels.shape[1] / height
  columns = (jnp.arange(width) + 0.5) * labels.shape[2] / width
  return labels[:, rows.astype(jnp.int32)][:, :, columns.astype(jnp.int32)]


def prototype_sums(features, labels, num_classes: int):
  """First reconstruction. Per class c < K: (sum of the feature vectors of pixels labelled
  c, their count), at feature resolution (labels resized by nearest). Sums over the global
  batch."""
  small_labels = resize_labels_nearest(labels, features.shape[1], features.shape[2])
  one_hot = losses.one_hot_targets(small_labels, num_classes)  # [B, h, w, K]
  sums = jnp.einsum("bhwk,bhwc->kc", one_hot, features.astype(jnp.float32))
  return sums, jnp.sum(one_hot, axis=(0, 1, 2))


def teacher_prototype_sums(teacher_features, teacher_logits, labels):
  """Second reconstruction (docs/algorithm.md 5.3; RDP's ``update_prototypes``): the
  teacher's per-old-class feature sums on the step's training images, at the start of the
  step.

  At feature resolution h x w: ``y`` = ``labels`` [B, H, W] resized by nearest
  (``resize_labels_nearest``); a pixel with ``y = 0`` takes ``argmax_c z_old_c`` of the
  teacher's low-resolution logits ``teacher_logits`` [B, h, w, K_old]; then for each old
  class c < K_old (background included) ``sums_c = sum_{i: y_i = c} f_i`` and
  ``counts_c = #{i: y_i = c}``, with f = ``teacher_features`` [B, h, w, C]. New-class
  (y >= K_old) and void pixels count nowhere. Returns (sums [K_old, C], counts [K_old]),
  float32, over the global batch; the caller adds them over batches and divides
  (``updated_prototypes(None, None, sums, counts)``: a class with count 0 is unseen).
  """
  batch, height, width, num_old_classes = teacher_logits.shape
  if teacher_features.shape[:3] != (batch, height, width):
    raise errors.InputError(
        f"teacher features {teacher_features.shape} and low-resolution teacher logits "
        f"{teacher_logits.shape} must share batch and spatial size")
  small_labels = resize_labels_nearest(labels, height, width)
  small_labels = jnp.where(small_labels == 0, jnp.argmax(teacher_logits, axis=-1),
                           small_labels)
  # New classes (>= K_old) and 255 fall outside the K_old one-hot: zero rows. The labels
  # are at feature resolution already, so prototype_sums' resize keeps them as they are.
  return prototype_sums(teacher_features, small_labels, num_old_classes)


def updated_prototypes(previous_prototypes, previous_seen, sums, counts):
  """Class means where the class has pixels in this step's data; stale prototypes (and
  their ``seen`` flags) are kept for the others. Shapes: [K, C], [K] (previous ones may
  have fewer classes: they are padded). With ``previous_prototypes = None`` it is just
  ``eta_c = sums_c / counts_c`` and ``seen_c = counts_c > 0`` (second reconstruction)."""
  num_classes = sums.shape[0]
  prototypes = np.zeros_like(sums)
  seen = np.zeros(num_classes, bool)
  if previous_prototypes is not None:
    prototypes[:len(previous_prototypes)] = previous_prototypes
    seen[:len(previous_seen)] = previous_seen
  present = counts > 0
  prototypes[present] = sums[present] / counts[present, None]
  return prototypes, seen | present


SIMILARITIES = ("cosine", "euclidean", "squared_euclidean")


def prototype_similarity(features, prototypes, similarity: str):
  """[B, h, w, C] x [K_old, C] -> [B, h, w, K_old] (docs/algorithm.md 5.3):
  ``cosine``: ``f . eta_c / (|f| |eta_c|)`` (with 1e-8 in each norm);
  ``euclidean``: ``-||f - eta_c||_2`` (plain distance, RDP's ``torch.norm(..., 2)``);
  ``squared_euclidean``: ``-||f - eta_c||_2^2`` (what ``euclidean`` meant in the first
  reconstruction)."""
  if similarity == "cosine":
    features = features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + 1e-8)
    prototypes = prototypes / (jnp.linalg.norm(prototypes, axis=-1, keepdims=True) + 1e-8)
    return jnp.einsum("bhwc,kc->bhwk", features, prototypes)
  if similarity in ("euclidean", "squared_euclidean"):
    # The difference itself, not |f|^2 - 2 f.eta + |eta|^2, which cancels badly near 0.
    squared = jnp.sum(jnp.square(features[..., None, :] - prototypes), axis=-1)
    return -squared if similarity == "squared_euclidean" else -jnp.sqrt(squared)
  raise errors.InputError(
      f"unknown gsc.similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")


def prototype_scores(teacher_logits, teacher_features, prototypes, prototype_seen,
                     temperature: float, similarity: str):
  """Corrected scores s [B, H, W, K_old] of docs/algorithm.md 5.3 (both reconstructions).

  At feature resolution, ``kappa = softmax_c(sim(f, eta_c) / T)`` over the SEEN old classes
  (``prototype_seen``; an unseen class gets a score of -1e9, so kappa exactly 0 and no NaN;
  if no class is seen kappa is uniform and s = q), with f = ``teacher_features``
  [B, h, w, C] and ``prototype_similarity``; kappa is resized bilinearly to the resolution
  H x W of ``teacher_logits`` [B, H, W, K_old]; ``q = softmax(teacher_logits)`` and
  ``s = kappa * q / sum_c(kappa * q)`` (the sum floored at 1e-12).
  """
  batch, height, width, num_old_classes = teacher_logits.shape
  similarities = prototype_similarity(teacher_features, prototypes[:num_old_classes],
                                      similarity)
  similarities = jnp.where(prototype_seen[:num_old_classes], similarities / temperature, -1e9)
  kappa = jax.nn.softmax(similarities, axis=-1)
  kappa = jax.image.resize(kappa, (batch, height, width, num_old_classes), "bilinear",
                           antialias=False)
  combined = kappa * jax.nn.softmax(teacher_logits, axis=-1)
  return combined / jnp.maximum(jnp.sum(combined, axis=-1, keepdims=True), 1e-12)


def prototype_relabel(labels, teacher_logits, teacher_features, prototypes, prototype_seen,
                      tau: float, theta: float, similarity: str):
  """First reconstruction: GSC's prototypical re-labelling of the pixels labelled 0 with a
  threshold theta (docs/algorithm.md 5.3).

  s = ``prototype_scores`` (temperature tau). With ``c = argmax s``: c = 0 keeps 0; c >= 1
  with ``s_c >= theta`` becomes c; otherwise 255. Pixels not labelled 0 (new classes, void)
  are never touched. Returns (labels, accepted [B, H, W] bool).
  """
  scores = prototype_scores(teacher_logits, teacher_features, prototypes, prototype_seen,
                            tau, similarity)
  best = jnp.argmax(scores, axis=-1)
  best_score = jnp.max(scores, axis=-1)
  accepted_class = (best >= 1) & (best_score >= theta)
  relabelled = jnp.where(best == 0, 0, jnp.where(accepted_class, best, IGNORE_LABEL))
  background = labels == 0
  accepted = background & (relabelled != IGNORE_LABEL)
  return jnp.where(background, relabelled, labels), accepted


def filter_then_relabel(labels, scores, accepted):
  """Second reconstruction, decision ``filter_then_relabel`` (docs/algorithm.md 5.3).

  For a pixel labelled 0: rejected by the entropy filter (``accepted`` [B, H, W] bool, from
  ``entropy_pseudo_labels``) -> 255; accepted -> ``argmax_c s_c`` (possibly 0), with s =
  ``prototype_scores`` [B, H, W, K_old]. Other pixels keep their label. nu as in PLOP:
  ``nu_b = accepted background pixels / (background pixels + 1e-6)`` (``adaptive_factor``).
  Returns (targets [B, H, W], nu [B]).
  """
  background = labels == 0
  accepted = accepted & background
  relabelled = jnp.where(accepted, jnp.argmax(scores, axis=-1), IGNORE_LABEL)
  return jnp.where(background, relabelled, labels), adaptive_factor(accepted, background)


def rdp_relabel(labels, scores):
  """Second reconstruction, decision ``rdp`` (docs/algorithm.md 5.3; RDP's
  ``batch_loss_rdp``): every pixel labelled 0 takes ``argmax_c s_c`` (s =
  ``prototype_scores``), none becomes 255; other pixels keep their label; ``nu = 1``.
  Returns (targets [B, H, W], nu [B] of ones)."""
  targets = jnp.where(labels == 0, jnp.argmax(scores, axis=-1), labels)
  return targets, jnp.ones(labels.shape[0], jnp.float32)

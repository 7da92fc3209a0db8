"""Pixel losses, each a pure function of NHWC arrays.

Conventions (docs/algorithm.md 1.9): ``logits`` are [B, H, W, K] at label resolution, ``labels``
are int [B, H, W] channel indices with 255 = ignore, and every loss is averaged over ALL
B*H*W pixels, ignored pixels included (they contribute 0). ``num_old_classes`` (K_old) counts
the channels of the previous steps, background included.
"""

import math

import jax
import jax.numpy as jnp

from gsc_jax.tasks import IGNORE_LABEL


def _mean_over_pixels(per_pixel_loss, labels):
  """Zeroes ignored pixels and averages over all of them (docs/algorithm.md 1.9)."""
  return jnp.mean(jnp.where(labels == IGNORE_LABEL, 0.0, per_pixel_loss))


def _pick(log_probabilities, labels):
  """log_probabilities[b, h, w, labels[b, h, w]], with ignored labels read as channel 0."""
  safe_labels = jnp.where(labels == IGNORE_LABEL, 0, labels)
  return jnp.take_along_axis(log_probabilities, safe_labels[..., None], axis=-1)[..., 0]


def one_hot_targets(labels, num_classes: int):
  """[B, H, W] labels -> [B, H, W, num_classes] one-hot; ignored pixels give all-zero rows."""
  return jax.nn.one_hot(jnp.where(labels == IGNORE_LABEL, -1, labels), num_classes)


def cross_entropy(logits, labels):
  """Plain cross-entropy: per pixel ``-(z_y - logsumexp_c z_c)``, mean over all pixels."""
  log_probabilities = jax.nn.log_softmax(logits, axis=-1)
  return _mean_over_pixels(-_pick(log_probabilities, labels), labels)


def unbiased_log_probabilities(logits, num_old_classes):
  """MiB's background-merged log-probabilities over {background} ∪ new classes.

  Channel 0: ``logsumexp(z[0:K_old]) - logsumexp(z)`` (background or any old class, since
  old classes are labelled background in the new data). Channel c >= K_old:
  ``z_c - logsumexp(z)``. Channels 1..K_old-1 are unused (set to the same values as z_c -
  logsumexp(z); a label never points at them after the remapping below).
  """
  normaliser = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  background = jax.nn.logsumexp(logits[..., :num_old_classes], axis=-1, keepdims=True)
  log_probabilities = logits - normaliser
  return log_probabilities.at[..., 0:1].set(background - normaliser)


def unbiased_cross_entropy(logits, labels, num_old_classes):
  """MiB unbiased cross-entropy (Cermelli et al. 2020, docs/algorithm.md 3).

  Labels < K_old are treated as background 0. A background pixel is scored by
  ``logsumexp(z[0:K_old]) - logsumexp(z)``; a pixel of new class c by
  ``z_c - logsumexp(z)``. Loss = -mean over all pixels.
  """
  merged_labels = jnp.where(labels < num_old_classes, 0, labels)
  log_probabilities = unbiased_log_probabilities(logits, num_old_classes)
  return _mean_over_pixels(-_pick(log_probabilities, merged_labels), merged_labels)


def unbiased_distillation(logits, teacher_logits, alpha=1.0):
  """MiB unbiased knowledge distillation (docs/algorithm.md 3).

  Teacher ``q = softmax(alpha * z_old)`` over its K_old channels. Student
  log-probabilities over the old label space: for old class c >= 1,
  ``z_c - logsumexp(z)``; for background, ``logsumexp(z[{0} ∪ new]) - logsumexp(z)``
  (the new classes were background for the teacher). Per pixel:
  ``-(1 / K_old) * sum_c q_c * logp_c``; mean over all pixels (no pixel is ignored).
  """
  num_old_classes = teacher_logits.shape[-1]
  teacher_probabilities = jax.nn.softmax(alpha * teacher_logits, axis=-1)
  normaliser = jax.nn.logsumexp(logits, axis=-1)
  background_and_new = jnp.concatenate(
      [logits[..., :1], logits[..., num_old_classes:]], axis=-1)
  background_log_probability = jax.nn.logsumexp(background_and_new, axis=-1) - normaliser
  old_log_probabilities = logits[..., 1:num_old_classes] - normaliser[..., None]
  per_pixel = (teacher_probabilities[..., 0] * background_log_probability
               + jnp.sum(teacher_probabilities[..., 1:] * old_log_probabilities, axis=-1))
  return -jnp.mean(per_pixel / num_old_classes)


def weighted_cross_entropy(logits, labels, image_weights):
  """PLOP's classification loss: per pixel ``-nu_b * (z_y - logsumexp_c z_c)``, where
  ``nu_b`` [B] is the image's adaptive factor; mean over all pixels (ignored ones give 0)."""
  log_probabilities = jax.nn.log_softmax(logits, axis=-1)
  per_pixel = -_pick(log_probabilities, labels) * image_weights[:, None, None]
  return _mean_over_pixels(per_pixel, labels)


# --- PLOP: Local POD (docs/algorithm.md 4) ------------------------------------------------------

def local_pod_embedding(features, scales=(1, 2, 4)):
  """Local POD embedding of one [B, h, w, C] tensor -> [B, D].

  The tensor is squared elementwise. At scale s the map is cut into s x s tiles of
  ``(h // s) x (w // s)`` pixels; each tile gives its mean over width (a C x h/s profile)
  and its mean over height (a C x w/s profile). Every profile of every tile and scale is
  flattened and concatenated.
  """
  squared = jnp.square(features)
  batch, height, width, _ = squared.shape
  pieces = []
  for scale in scales:
    tile_height, tile_width = height // scale, width // scale
    for i in range(scale):
      for j in range(scale):
        tile = squared[:, i * tile_height:(i + 1) * tile_height,
                       j * tile_width:(j + 1) * tile_width]
        pieces.append(jnp.mean(tile, axis=2).reshape(batch, -1))  # width pooled: C x h
        pieces.append(jnp.mean(tile, axis=1).reshape(batch, -1))  # height pooled: C x w
  return jnp.concatenate(pieces, axis=-1)


def local_pod_distance(features, teacher_features, scales=(1, 2, 4)):
  """``mean_b || embed(features_b) - embed(teacher_features_b) ||_2`` (norm not squared)."""
  difference = local_pod_embedding(features, scales) - local_pod_embedding(teacher_features,
                                                                           scales)
  return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(difference), axis=-1)))


def logits_in_old_space(logits, num_old_classes):
  """[..., K] logits -> [..., K_old]: channel 0 becomes ``z_0 + sum_{c >= K_old} z_c`` (the
  new classes were background for the teacher); channels 1..K_old-1 are unchanged."""
  background = logits[..., :1] + jnp.sum(logits[..., num_old_classes:], axis=-1, keepdims=True)
  return jnp.concatenate([background, logits[..., 1:num_old_classes]], axis=-1)


def local_pod(outputs, teacher_outputs, num_old_classes, num_new_classes,
              feature_weight=0.01, logits_weight=0.0005, scales=(1, 2, 4)):
  """PLOP's Local POD over six tensors (docs/algorithm.md 4).

  ``(1/6) * sqrt(K / N) * [ sum_{f in 4 stages + head} feature_weight * d(f)
                            + logits_weight * d(logits_low in the old space) ]``
  with ``d`` = ``local_pod_distance``, K = all classes now, N = the step's new classes.
  The stage tensors are the pre-activation outputs of each stage's last block. A
  domain-incremental step adds no class (N = 0): the factor is 1, as in PLOP's code, which
  counts every class as new there (sqrt(K / K)).
  """
  tensors = list(zip(outputs["stages"], teacher_outputs["stages"]))
  tensors.append((outputs["head"], teacher_outputs["head"]))
  total = sum(feature_weight * local_pod_distance(student, teacher, scales)
              for student, teacher in tensors)
  student_logits = logits_in_old_space(outputs["logits_low"], num_old_classes)
  total += logits_weight * local_pod_distance(student_logits, teacher_outputs["logits_low"],
                                              scales)
  num_classes = num_old_classes + num_new_classes
  class_factor = math.sqrt(num_classes / num_new_classes) if num_new_classes else 1.0
  return total * class_factor / (len(tensors) + 1)


# --- GSC: soft-sharp semantic relation distillation (docs/algorithm.md 5.2) ---------------------
#
# Two reconstructions live here. The first (soft_label_loss, class_relation_loss) is kept
# unchanged so that earlier results can be reproduced. The second follows the released code
# of RDP (BladeDancer957/INER_RDP, src/utils.py, src/trainer.py:batch_loss_rdp), FISS
# (JiahuaDong/FISS, train.py) and GLFC (conditionWang/FCIL, src/GLFC.py):
# soft_label_targets, soft_label_loss_all_pixels, soft_label_binary_cross_entropy,
# mean_weight_per_class and class_relation_loss_all_classes. sharpening_loss serves both.

def soft_label_loss(logits, labels, teacher_logits):
  """First reconstruction: soft-label cross-entropy with void pixels zeroed.

  Per pixel, ``v = one_hot(y)`` over K channels with its first K_old entries replaced by
  ``sigmoid(z_old)`` (``soft_label_targets``); the soft label is ``softmax(v)``; the loss
  is ``-(1/K) * sum_c softmax(v)_c * log_softmax(z)_c``. Mean over all pixels; pixels
  labelled 255 contribute 0.
  """
  return _mean_over_pixels(_soft_label_cross_entropy(logits, labels, teacher_logits), labels)


def sharpening_loss(logits):
  """Entropy minimisation: per pixel ``-(1/K) * sum_c p_c log p_c`` with ``p = softmax(z)``;
  mean over all pixels. Minimising it sharpens the student's predictions."""
  log_probabilities = jax.nn.log_softmax(logits, axis=-1)
  return jnp.mean(-jnp.mean(jnp.exp(log_probabilities) * log_probabilities, axis=-1))


def class_relation_loss(logits, labels, teacher_logits, class_weights):
  """First reconstruction: class relation consistency (L1), over the old classes c < K_old.

  Student: ``a_c`` = mean of ``max_k p_k`` over the pixels the student predicts as c.
  Teacher: ``b_c`` = mean of the teacher's ``max_k q_k`` over the pixels (pseudo-)labelled c.
  Loss = ``sum_c w_c |a_c - b_c| / #{c present on both sides}`` with ``w_c``
  (``class_weights`` [K_old]) the class's mean compensation weight. Means are over the
  whole (global) batch; a class missing on either side is left out.
  """
  num_old_classes = teacher_logits.shape[-1]
  predicted = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  student_confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)
  teacher_confidence = jnp.max(jax.nn.softmax(teacher_logits, axis=-1), axis=-1)
  student_mean, student_count = _class_means(predicted, student_confidence, num_old_classes)
  teacher_mean, teacher_count = _class_means(labels, teacher_confidence, num_old_classes)
  present = (student_count > 0) & (teacher_count > 0)
  differences = jnp.where(present, class_weights * jnp.abs(student_mean - teacher_mean), 0.0)
  return jnp.sum(differences) / jnp.maximum(jnp.sum(present), 1)


def _class_means(members, values, num_classes: int):
  """Per class c < num_classes: (mean of ``values`` over the pixels where ``members == c``,
  0 for an empty class; their count), over the whole batch. 255 is no class."""
  one_hot = (members[..., None] == jnp.arange(num_classes)).astype(jnp.float32)
  counts = jnp.sum(one_hot, axis=(0, 1, 2))
  return jnp.sum(one_hot * values[..., None], axis=(0, 1, 2)) / jnp.maximum(counts, 1.0), counts


def temperature_distillation(logits, teacher_logits, soft_temperature, sharp_temperature):
  """Variant of 5.2: unbiased distillation (MiB's background merging) at a soft and a sharp
  temperature, ``unkd(z / T_soft, z_old / T_soft) + unkd(z / T_sharp, z_old / T_sharp)``."""
  return (unbiased_distillation(logits / soft_temperature, teacher_logits / soft_temperature)
          + unbiased_distillation(logits / sharp_temperature,
                                  teacher_logits / sharp_temperature))


# --- GSC, second reconstruction (docs/algorithm.md 5.2) ---------------------------------------

def soft_label_targets(labels, teacher_logits, num_classes: int):
  """The soft-label target v [B, H, W, K] of RDP / FISS / GLFC, for every pixel.

  ``v_i = [sigmoid(z_old_i) on the K_old old channels, one_hot(y_i) on the N new channels]``;
  the new part is all zero when ``y_i`` is an old class, background or 255. (The released
  codes build one_hot(y) over K channels and overwrite its first K_old entries.)
  """
  num_old_classes = teacher_logits.shape[-1]
  return one_hot_targets(labels, num_classes).at[..., :num_old_classes].set(
      jax.nn.sigmoid(teacher_logits.astype(jnp.float32)))


def _soft_label_cross_entropy(logits, labels, teacher_logits):
  """Per pixel [B, H, W]: ``-(1/K) sum_c softmax(v)_c log softmax(z)_c``, v from
  ``soft_label_targets``."""
  targets = soft_label_targets(labels, teacher_logits, logits.shape[-1])
  soft_labels = jax.nn.softmax(targets, axis=-1)
  return -jnp.mean(soft_labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def soft_label_loss_all_pixels(logits, labels, teacher_logits):
  """RDP's soft labels (docs/algorithm.md 5.2): cross-entropy to ``softmax(v)``.

  With v from ``soft_label_targets``, per pixel
  ``loss_i = -(1/K) sum_c softmax(v_i)_c log softmax(z_i)_c``; mean over ALL B*H*W pixels,
  void INCLUDED (a pixel labelled 255 still has its teacher part in v), as RDP's and
  FISS's released code (``BCEWithLogitsLossWithIgnoreIndexSoftLabel`` then ``.mean()``).
  """
  return jnp.mean(_soft_label_cross_entropy(logits, labels, teacher_logits))


def soft_label_binary_cross_entropy(logits, labels, teacher_logits):
  """GLFC / HFC's soft labels (docs/algorithm.md 5.2): per-channel binary cross-entropy to v.

  With v from ``soft_label_targets`` (no softmax), per pixel
  ``loss_i = -(1/K) sum_c [v_ic log sigmoid(z_ic) + (1 - v_ic) log(1 - sigmoid(z_ic))]``;
  mean over ALL pixels, void included (GLFC's
  ``F.binary_cross_entropy_with_logits(output, distill_target)``, mean reduction).
  ``log(1 - sigmoid(z)) = log_sigmoid(-z)`` keeps it finite for large |z|.
  """
  targets = soft_label_targets(labels, teacher_logits, logits.shape[-1])
  per_channel = (targets * jax.nn.log_sigmoid(logits)
                 + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  return -jnp.mean(per_channel)


def mean_weight_per_class(labels, pixel_weights, num_classes: int, empty_value: float = 0.0):
  """``wbar_c`` [num_classes] = mean of ``pixel_weights`` [B, H, W] over the pixels labelled
  c, ``empty_value`` where no pixel is labelled c (0: FISS's
  ``efficient_dis_old_class_weight``; the first reconstruction used 1 over the K_old old
  classes). Over the whole batch; void pixels count for no class. Pass all-ones weights
  when there is no compensation."""
  means, counts = _class_means(labels, pixel_weights, num_classes)
  return jnp.where(counts > 0, means, empty_value)


def class_relation_loss_all_classes(logits, labels, teacher_logits, class_weights):
  """FISS's class-relation consistency (docs/algorithm.md 5.2), over ALL K classes.

  ``loss = (1/K) sum_c |wbar_c a_c - wbar_c b_c|`` (FISS: ``L1Loss`` mean of
  ``w1 * new_cls_aver`` against ``w1 * old_cls_aver``), where, over the whole batch,
  - ``a_c`` = mean of the student's ``max_k softmax(z)_k`` over the pixels it predicts as c
    (argmax under stop_gradient; every pixel, void included, has a prediction);
  - ``b_c`` = mean of the teacher's ``max_k softmax(z_old)_k`` (K_old channels) over the
    pixels labelled c;
  - ``wbar_c`` = ``class_weights`` [K] (``mean_weight_per_class``), held constant.
  Each of a_c, b_c is 0 where no pixel defines it. The caller applies FISS's 0.5.
  """
  num_classes = logits.shape[-1]
  student_confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)
  predicted = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  teacher_confidence = jax.lax.stop_gradient(
      jnp.max(jax.nn.softmax(teacher_logits, axis=-1), axis=-1))
  # 255 never equals a class index, so void pixels define no b_c.
  student_means, _ = _class_means(predicted, student_confidence, num_classes)
  teacher_means, _ = _class_means(labels, teacher_confidence, num_classes)
  weights = jax.lax.stop_gradient(class_weights)
  return jnp.mean(jnp.abs(weights * student_means - weights * teacher_means))

"""Pixel losses, each a pure function of NHWC arrays.

Conventions (ALGORITHM.md 1.9): ``logits`` are [B, H, W, K] at label resolution, ``labels``
are int [B, H, W] channel indices with 255 = ignore, and every loss is averaged over ALL
B*H*W pixels, ignored pixels included (they contribute 0). ``num_old_classes`` (K_old) counts
the channels of the previous steps, background included.
"""

import jax
import jax.numpy as jnp

IGNORE_LABEL = 255


def _mean_over_pixels(per_pixel_loss, labels):
  """Zeroes ignored pixels and averages over all of them (ALGORITHM.md 1.9)."""
  return jnp.mean(jnp.where(labels == IGNORE_LABEL, 0.0, per_pixel_loss))


def _pick(log_probabilities, labels):
  """log_probabilities[b, h, w, labels[b, h, w]], with ignored labels read as channel 0."""
  safe_labels = jnp.where(labels == IGNORE_LABEL, 0, labels)
  return jnp.take_along_axis(log_probabilities, safe_labels[..., None], axis=-1)[..., 0]


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
  """MiB unbiased cross-entropy (Cermelli et al. 2020, ALGORITHM.md 3).

  Labels < K_old are treated as background 0. A background pixel is scored by
  ``logsumexp(z[0:K_old]) - logsumexp(z)``; a pixel of new class c by
  ``z_c - logsumexp(z)``. Loss = -mean over all pixels.
  """
  merged_labels = jnp.where(labels < num_old_classes, 0, labels)
  log_probabilities = unbiased_log_probabilities(logits, num_old_classes)
  return _mean_over_pixels(-_pick(log_probabilities, merged_labels), merged_labels)


def unbiased_distillation(logits, teacher_logits, alpha=1.0):
  """MiB unbiased knowledge distillation (ALGORITHM.md 3).

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

"""GSC step-aware gradient compensation (docs/algorithm.md 5.1; reconstructed, see docs/gsc_step.md).

The transform acts on the gradient of the cross-entropy with respect to the (upsampled)
LOGITS, [B, H, W, K], not on parameter gradients. For every pixel i with target y_i:

  g_i   = 1 - p_i(y_i)                 gradient magnitude on the target logit (a constant)
  zeta  = K_old / K                    the step-aware exponent (1 when ``use_exponent`` is off)
  m_k   = mean of g_i^zeta over the pixels whose target is in old group k (global batch;
          optionally an EMA across iterations, kept in the transform's state)
  w_i   = g_i^zeta / m_k   for a pixel of old group k;   w_i = 1 for the current step's pixels

and the pixel's logit gradient is multiplied by w_i. The train step then pulls the scaled
logit gradients back through the network with ``jax.vjp``; that equals differentiating the
cross-entropy with every w_i held constant (tests/test_compensation.py).

Groups (``group_of_channel``): by the step that introduced the class (default, background
in step 0), "cumulative" (every old class in one group), or one group per class.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gsc_jax.tasks import IGNORE_LABEL
from gsc_jax import errors


def group_of_channel(classes_per_step, grouping: str) -> tuple[np.ndarray, np.ndarray]:
  """Per output channel, its group id, and per group, whether it is the current step's.

  ``classes_per_step`` lists the channel counts of steps 0..t. Returns
  (``group_of_channel`` int32 [K], ``is_current_group`` bool [G]).
  """
  step_of_channel = np.concatenate(
      [np.full(count, step) for step, count in enumerate(classes_per_step)]).astype(np.int32)
  current_step = len(classes_per_step) - 1
  if grouping == "step":
    groups = step_of_channel
  elif grouping == "cumulative":
    groups = (step_of_channel == current_step).astype(np.int32)  # 0: every old class, 1: new
  elif grouping == "class":
    groups = np.arange(len(step_of_channel), dtype=np.int32)
  else:
    raise errors.InputError(f"unknown gsc.groups {grouping!r}; valid: step, cumulative, class")
  num_groups = int(groups.max()) + 1
  is_current = np.zeros(num_groups, bool)
  is_current[groups[step_of_channel == current_step]] = True
  return groups, is_current


def class_probabilities(logits, magnitude: str):
  """The probabilities ``p`` used for g = 1 - p(y): softmax (default) or per-channel sigmoid."""
  if magnitude == "softmax":
    return jax.nn.softmax(logits, axis=-1)
  if magnitude == "sigmoid":
    return jax.nn.sigmoid(logits)
  raise errors.InputError(f"unknown gsc.magnitude {magnitude!r}; valid: softmax, sigmoid")


def scaled_magnitudes(targets, probabilities, exponent: float):
  """``g_i^zeta`` per pixel [B, H, W] (0 for ignored pixels), with ``g_i = 1 - p_i(y_i)``."""
  valid = targets != IGNORE_LABEL
  safe_targets = jnp.where(valid, targets, 0)
  target_probability = jnp.take_along_axis(probabilities, safe_targets[..., None], axis=-1)
  magnitude = jnp.clip(1.0 - target_probability[..., 0], 0.0, 1.0)
  return jnp.where(valid, magnitude ** exponent, 0.0)


def group_statistics(targets, magnitudes, groups, num_groups: int):
  """Per group: (sum of g^zeta, pixel count) over the whole batch, ignored pixels excluded."""
  valid = targets != IGNORE_LABEL
  pixel_group = jnp.where(valid, jnp.asarray(groups)[jnp.where(valid, targets, 0)], num_groups)
  one_hot = jax.nn.one_hot(pixel_group, num_groups)  # ignored pixels: all-zero rows
  return (jnp.sum(one_hot * magnitudes[..., None], axis=(0, 1, 2)),
          jnp.sum(one_hot, axis=(0, 1, 2)))


def pixel_weights(targets, magnitudes, group_means, groups, is_current_group):
  """``w_i = g_i^zeta / m_{group(y_i)}`` for old groups, 1 for the current step and for
  ignored pixels. A group mean of 0 (absent group or saturated pixels) gives weight 0,
  never a NaN."""
  valid = targets != IGNORE_LABEL
  pixel_group = jnp.asarray(groups)[jnp.where(valid, targets, 0)]
  mean = group_means[pixel_group]
  old_weight = jnp.where(mean > 0, magnitudes / jnp.where(mean > 0, mean, 1.0), 0.0)
  keep_one = ~valid | jnp.asarray(is_current_group)[pixel_group]
  return jnp.where(keep_one, 1.0, old_weight)


class CompensationState(NamedTuple):
  """``group_means`` [G]: the means m_k in use; ``group_seen`` [G]: whether m_k was ever
  measured (an EMA starts from its first measurement, not from 0)."""
  group_means: jax.Array
  group_seen: jax.Array


def updated_group_means(state: CompensationState, sums, counts, ema_decay: float):
  """Batch means where the group is present; with ``ema_decay`` > 0,
  ``m <- decay * m + (1 - decay) * batch_mean`` once the group was seen. Absent groups keep
  their previous estimate."""
  present = counts > 0
  batch_means = sums / jnp.maximum(counts, 1.0)
  blended = jnp.where(state.group_seen,
                      ema_decay * state.group_means + (1.0 - ema_decay) * batch_means,
                      batch_means)
  return CompensationState(group_means=jnp.where(present, blended, state.group_means),
                           group_seen=state.group_seen | present)


def gradient_compensation(groups, is_current_group, exponent: float = 1.0,
                          ema_decay: float = 0.0):
  """The optax transform that scales per-pixel logit gradients [B, H, W, K] by ``w_i``,
  and a function ``weights(state, targets, probabilities)`` giving those ``w_i``.

  ``update(logit_gradients, state, params=None, *, targets, probabilities)``; ``targets``
  [B, H, W] are the (pseudo-)labels the cross-entropy used and ``probabilities`` the
  [B, H, W, K] output of ``class_probabilities``. ``exponent`` is zeta. Returns the scaled
  gradients and the new state (group means). Current-step pixels keep weight exactly 1.
  """
  groups = np.asarray(groups, np.int32)
  is_current_group = np.asarray(is_current_group, bool)
  num_groups = len(is_current_group)

  def init_fn(params):
    del params  # the state depends on the groups, not on the gradients' shape
    return CompensationState(group_means=jnp.zeros(num_groups, jnp.float32),
                             group_seen=jnp.zeros(num_groups, bool))

  def update_fn(logit_gradients, state, params=None, *, targets, probabilities):
    del params
    magnitudes = jax.lax.stop_gradient(scaled_magnitudes(targets, probabilities, exponent))
    sums, counts = group_statistics(targets, magnitudes, groups, num_groups)
    state = updated_group_means(state, sums, counts, ema_decay)
    weights = pixel_weights(targets, magnitudes, state.group_means, groups, is_current_group)
    return logit_gradients * weights[..., None].astype(logit_gradients.dtype), state

  def weights_fn(state, targets, probabilities):
    """The per-pixel weights [B, H, W] that ``update`` applied with the state it returned."""
    magnitudes = jax.lax.stop_gradient(scaled_magnitudes(targets, probabilities, exponent))
    return pixel_weights(targets, magnitudes, state.group_means, groups, is_current_group)

  transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return transform, weights_fn

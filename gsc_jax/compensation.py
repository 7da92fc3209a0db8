"""GSC step-aware gradient compensation (docs/algorithm.md 5.1; reconstructed, see docs/gsc_step.md).

The transform acts on the gradient of the cross-entropy with respect to the (upsampled)
LOGITS, [B, H, W, K], not on parameter gradients: every pixel's logit gradient is
multiplied by a weight w_i. The train step pulls the scaled logit gradients back through
the network with ``jax.vjp``; that equals differentiating the cross-entropy with every w_i
held constant (tests/test_compensation.py).

Notation: targets y [B, H, W] (255 = ignored), the student's logits z [B, H, W, K]; step t
is the current step, ``classes_per_step`` the channel counts of steps 0..t, K_old the
channels of steps < t and K = K_old + N. For a pixel i with y_i != 255:

  g_i   = clip(1 - p_i(y_i), 0, 1) ** zeta     p = sigmoid(z) (default) or softmax(z), from
                                                the stop-gradient logits; zeta = K_old / K
                                                (1 when ``use_exponent`` is off)
  g_i   <- ln(1 + g_i)                         only with ``bound`` (HFC, see below)
  m_k   = mean of g over the pixels of group k (global batch, ignored pixels excluded;
          optionally an EMA across iterations, kept in the transform's state)
  w_i   = sum_k M[y_i, k] * g_i / m_k          for a pixel whose class belongs to a group
  w_i   = 1                                    for a pixel in no group, and ignored pixels

M [K, G] is the membership matrix (channel c belongs to group k). A group with no pixel or
whose g are all 0 (m_k = 0) contributes 0, never a NaN. Groupings (``grouping``), with
their groups in column order:

- "fiss" (default; FISS's nested groups): the base group of the step-0 classes (background
  included), then for k = 1..t-1 the nested group of the classes of steps 1..k. A class of
  step m >= 1 is in the nested groups k = m..t-1, so its pixels get the sum of those terms;
  the current step's pixels keep w = 1. At t = 1 only the base group exists.
- "step": one group per old step 0..t-1; current-step pixels keep w = 1.
- "old_new" (GLFC): one group of all old classes, one of the current step's; both
  normalised, so current-step pixels are reweighted too.
- "class": one group per old class; current-step pixels keep w = 1.

At step 0 there is no old class; a grouping without any group gets one empty column so
that the state never has a zero-size array.

The bound (``bound=True``) follows HFC's ``gradient_balanced_weight`` in train.py of
JiahuaDong/HFC (commit b70d2a968debce9c15e00ebfe8908a4e9d0559a6). Its order there:
(1) ``g = |softmax(z) - onehot(y)|``, (2) ``g = g ** z`` with ``z = (K - N) / K``, (3)
``g = log(g + 1)``, (4) per group (each old task, and the new classes), the ratio
``g / mean_group(g)`` clamped to [0.5, 1.2] for an old task's samples and to [0.5, 1.0]
for the new classes' samples. So the log comes after the exponent and before the group
means (the means are of ln(1 + g^zeta)), and the clip comes after the normalisation. HFC's
groups are disjoint, so its per-group clamp is the sample's final weight; here the clip is
applied to the final weight w_i (for "fiss" that is the sum of the nested terms): old-class
pixels to [0.5, 1.2] and, where the grouping normalises them ("old_new"), current-step
pixels to [0.5, 1.0], as HFC does for its new classes. A current-step pixel that keeps
w = 1 is inside [0.5, 1.0] and unchanged. With the bound, an old pixel whose groups all
contribute 0 gets the floor 0.5 (HFC itself divides 0 by 0 there). HFC also multiplies
the CE weight by (1 - zeta) (new) or sqrt(1 - zeta) (old) and derives a second weight for
its distillation loss; those balance HFC's own loss terms and are not part of this
transform (GSC weights its loss terms in its config).

The state also carries diagnostics of the last update, per step s = 0..t of the target
class: the mean and max of w over those pixels and their share of the logit-gradient mass
after compensation (``step_diagnostics``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gsc_jax.tasks import IGNORE_LABEL
from gsc_jax import errors

GROUPINGS = ("fiss", "step", "old_new", "class")
MAGNITUDES = ("sigmoid", "softmax")
# HFC's clamp ranges (train.py, gradient_balanced_weight): old tasks, then the new classes.
OLD_WEIGHT_RANGE = (0.5, 1.2)
NEW_WEIGHT_RANGE = (0.5, 1.0)


# --- The step's groups (static, NumPy) -----------------------------------------------------

def step_of_channel(classes_per_step) -> np.ndarray:
  """Per output channel, the step that introduced it: ``[0]*n_0 + [1]*n_1 + ... + [t]*n_t``
  (int32 [K]) for ``classes_per_step = (n_0, ..., n_t)``."""
  return np.concatenate(
      [np.full(count, step) for step, count in enumerate(classes_per_step)]).astype(np.int32)


def compensation_exponent(classes_per_step, use_exponent: bool = True) -> float:
  """``zeta = K_old / K`` with K_old = n_0 + ... + n_{t-1} and K = K_old + n_t; 1 when
  ``use_exponent`` is off."""
  if not use_exponent:
    return 1.0
  return float(sum(classes_per_step[:-1])) / float(sum(classes_per_step))


def group_membership(classes_per_step, grouping: str = "fiss") -> np.ndarray:
  """The membership matrix M (float32 [K, G]): ``M[c, k] = 1`` when channel c belongs to
  group k; groups in the column order of the module docstring. A grouping without any
  group (step 0) gets one empty column."""
  steps = step_of_channel(classes_per_step)
  current_step = len(classes_per_step) - 1
  num_old_channels = int(np.sum(steps < current_step))
  if grouping == "fiss":
    columns = [steps == 0] if current_step >= 1 else []
    columns += [(steps >= 1) & (steps <= last) for last in range(1, current_step)]
  elif grouping == "step":
    columns = [steps == step for step in range(current_step)]
  elif grouping == "old_new":
    columns = [steps < current_step, steps == current_step]
  elif grouping == "class":
    columns = [np.arange(len(steps)) == channel for channel in range(num_old_channels)]
  else:
    raise errors.InputError(
        f"unknown gsc.groups {grouping!r}; valid: {', '.join(GROUPINGS)}")
  if not columns:  # fixed, non-empty state shapes even when no class is old yet
    columns = [np.zeros(len(steps), bool)]
  return np.stack(columns, axis=1).astype(np.float32)


def channel_weight_ranges(classes_per_step) -> tuple[np.ndarray, np.ndarray]:
  """Per channel, the bound's clip range of the final weight: ``OLD_WEIGHT_RANGE`` for the
  classes of steps < t, ``NEW_WEIGHT_RANGE`` for the current step's (float32 [K] each)."""
  is_old = step_of_channel(classes_per_step) < len(classes_per_step) - 1
  lower = np.where(is_old, OLD_WEIGHT_RANGE[0], NEW_WEIGHT_RANGE[0]).astype(np.float32)
  upper = np.where(is_old, OLD_WEIGHT_RANGE[1], NEW_WEIGHT_RANGE[1]).astype(np.float32)
  return lower, upper


# --- Per-pixel magnitudes and weights ------------------------------------------------------

def target_complement_probability(targets, logits, magnitude: str):
  """``1 - p_i(y_i)`` per pixel [B, H, W], clipped to [0, 1]: ``p = sigmoid(z)`` so that
  ``1 - p(y) = sigmoid(-z_y)``, or ``p = softmax(z)`` so that ``1 - p(y) = sum_{c != y} p_c``.
  Ignored pixels read channel 0 (the caller zeroes them)."""
  safe_targets = jnp.where(targets == IGNORE_LABEL, 0, targets)[..., None]
  if magnitude == "sigmoid":
    # sigmoid(-z) rather than 1 - sigmoid(z): no cancellation for a confident pixel
    complement = jax.nn.sigmoid(-jnp.take_along_axis(logits, safe_targets, axis=-1)[..., 0])
  elif magnitude == "softmax":
    # sum of the other classes' probabilities rather than 1 - p(y): a confident pixel's
    # small g keeps its float32 relative precision instead of losing it to cancellation
    is_target = jnp.arange(logits.shape[-1]) == safe_targets
    complement = jnp.sum(jnp.where(is_target, 0.0, jax.nn.softmax(logits, axis=-1)), axis=-1)
  else:
    raise errors.InputError(
        f"unknown gsc.magnitude {magnitude!r}; valid: {', '.join(MAGNITUDES)}")
  return jnp.clip(complement, 0.0, 1.0)


def gradient_magnitudes(targets, logits, magnitude: str, exponent: float, bound: bool):
  """``g_i = (1 - p_i(y_i)) ** zeta``, with the bound ``g_i = ln(1 + (1 - p_i(y_i)) ** zeta)``
  (HFC: the exponent first, then the log); 0 for ignored pixels. A constant (stop-gradient)."""
  logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
  magnitudes = target_complement_probability(targets, logits, magnitude) ** exponent
  if bound:
    magnitudes = jnp.log1p(magnitudes)
  return jnp.where(targets == IGNORE_LABEL, 0.0, magnitudes)


def per_channel_sums(targets, values, num_channels: int):
  """``sum over pixels i with y_i = c of values_i`` per channel c (float32 [K]); ignored
  pixels are dropped."""
  segments = jnp.where(targets == IGNORE_LABEL, num_channels, targets).reshape(-1)
  return jax.ops.segment_sum(values.reshape(-1).astype(jnp.float32), segments,
                             num_segments=num_channels + 1)[:num_channels]


def group_statistics(targets, magnitudes, membership):
  """Per group k: ``(sum_i M[y_i, k] g_i, sum_i M[y_i, k])`` over the whole batch, ignored
  pixels excluded (float32 [G] each)."""
  num_channels = membership.shape[0]
  channel_sums = per_channel_sums(targets, magnitudes, num_channels)
  channel_counts = per_channel_sums(targets, jnp.ones_like(magnitudes), num_channels)
  membership = jnp.asarray(membership)
  return channel_sums @ membership, channel_counts @ membership


def updated_group_means(group_means, group_seen, sums, counts, ema_decay: float):
  """``m_k = sums_k / counts_k`` for a group present in the batch; with ``ema_decay`` > 0
  and a group seen before, ``m_k <- decay * m_k + (1 - decay) * sums_k / counts_k`` (an
  EMA starts at its first measurement). An absent group keeps its estimate. Returns the
  new (group_means, group_seen)."""
  present = counts > 0
  batch_means = sums / jnp.maximum(counts, 1.0)
  blended = jnp.where(group_seen, ema_decay * group_means + (1.0 - ema_decay) * batch_means,
                      batch_means)
  return jnp.where(present, blended, group_means), group_seen | present


def channel_coefficients(group_means, membership):
  """``a_c = sum_k M[c, k] / m_k`` per channel c, where a group with ``m_k = 0`` adds 0 (so
  w_i = g_i * a_{y_i}); and whether channel c belongs to any group (float32 [K], bool [K])."""
  membership = jnp.asarray(membership)
  positive = group_means > 0
  inverse_means = jnp.where(positive, 1.0 / jnp.where(positive, group_means, 1.0), 0.0)
  return membership @ inverse_means, jnp.any(membership > 0, axis=1)


def bounded_weights(targets, weights, lower, upper):
  """HFC's clip of the final weight: ``w_i <- clip(w_i, lower[y_i], upper[y_i])`` for every
  non-ignored pixel (old classes [0.5, 1.2], current step [0.5, 1.0])."""
  safe_targets = jnp.where(targets == IGNORE_LABEL, 0, targets)
  clipped = jnp.clip(weights, jnp.asarray(lower)[safe_targets], jnp.asarray(upper)[safe_targets])
  return jnp.where(targets == IGNORE_LABEL, weights, clipped)


def pixel_weights(targets, magnitudes, group_means, membership, weight_ranges=None):
  """``w_i = sum_k M[y_i, k] g_i / m_k`` for a pixel whose class is in a group, 1 for the
  others and for ignored pixels; then, with ``weight_ranges = (lower, upper)`` (the
  bound), ``bounded_weights``. Float32 [B, H, W]."""
  coefficients, in_a_group = channel_coefficients(group_means, membership)
  safe_targets = jnp.where(targets == IGNORE_LABEL, 0, targets)
  grouped = (targets != IGNORE_LABEL) & in_a_group[safe_targets]
  weights = jnp.where(grouped, magnitudes * coefficients[safe_targets], 1.0)
  if weight_ranges is not None:
    weights = bounded_weights(targets, weights, *weight_ranges)
  return weights


# --- Diagnostics ---------------------------------------------------------------------------

def step_diagnostics(targets, weights, scaled_gradients, steps):
  """Per step s of the target class (float32 [t + 1] each), over the pixels i with
  ``step(y_i) = s``:

    weight_mean_s    = mean of w_i                                   (0 if no pixel)
    weight_max_s     = max of w_i                                    (0 if no pixel; w >= 0)
    gradient_share_s = sum_i sum_c |scaled_{i,c}| / sum_{all pixels j} sum_c |scaled_{j,c}|
                                                                     (0 if the total is 0)

  With the cross-entropy's gradients the ignored pixels add 0 to the total, so the shares
  sum to 1."""
  num_channels = len(steps)
  step_one_hot = jnp.asarray(
      steps[:, None] == np.arange(int(steps.max()) + 1)[None, :], jnp.float32)  # [K, S]
  counts = per_channel_sums(targets, jnp.ones_like(weights), num_channels) @ step_one_hot
  weight_sums = per_channel_sums(targets, weights, num_channels) @ step_one_hot
  weight_mean = jnp.where(counts > 0, weight_sums / jnp.maximum(counts, 1.0), 0.0)

  segments = jnp.where(targets == IGNORE_LABEL, num_channels, targets).reshape(-1)
  # an empty channel's max is -inf; weights are >= 0, so 0 stands for "no pixel"
  channel_max = jnp.maximum(jax.ops.segment_max(weights.reshape(-1).astype(jnp.float32),
                                                segments, num_segments=num_channels + 1), 0.0)
  weight_max = jnp.max(channel_max[:num_channels, None] * step_one_hot, axis=0)

  pixel_mass = jnp.sum(jnp.abs(scaled_gradients.astype(jnp.float32)), axis=-1)
  step_mass = per_channel_sums(targets, pixel_mass, num_channels) @ step_one_hot
  total_mass = jnp.sum(pixel_mass)
  gradient_share = jnp.where(total_mass > 0, step_mass / jnp.where(total_mass > 0, total_mass,
                                                                     1.0), 0.0)
  return weight_mean, weight_max, gradient_share


# --- The optax transform -------------------------------------------------------------------

class CompensationState(NamedTuple):
  """Fixed-shape state (checkpointed, jitted). ``group_means`` [G]: the means m_k in use;
  ``group_seen`` [G] bool: whether m_k was ever measured (an EMA starts at its first
  measurement, not at 0). Diagnostics of the last update, per step 0..t of the target class
  ([t + 1] each, see ``step_diagnostics``): ``weight_mean``, ``weight_max``,
  ``gradient_share``."""
  group_means: jax.Array
  group_seen: jax.Array
  weight_mean: jax.Array
  weight_max: jax.Array
  gradient_share: jax.Array


def gradient_compensation(classes_per_step, grouping: str = "fiss", magnitude: str = "sigmoid",
                          use_exponent: bool = True, bound: bool = False,
                          ema_decay: float = 0.0):
  """The optax transform that scales per-pixel logit gradients [B, H, W, K] by ``w_i``, and
  ``weights(state, targets, logits)`` giving those ``w_i`` [B, H, W].

  ``update(logit_gradients, state, params=None, *, targets, logits)``: ``targets`` [B, H, W]
  are the (pseudo-)labels the cross-entropy used, ``logits`` the student's [B, H, W, K]
  (stop-gradient is applied again inside). Returns ``logit_gradients * w[..., None]`` and
  the new ``CompensationState``. ``weights`` applied to the returned state gives the ``w``
  that update used. ``classes_per_step`` are the channel counts of steps 0..t; ``grouping``
  one of ``GROUPINGS``, ``magnitude`` one of ``MAGNITUDES``; ``ema_decay`` in [0, 1)
  (0: the batch's own means).
  """
  classes_per_step = tuple(int(count) for count in classes_per_step)
  if not classes_per_step or min(classes_per_step) < 1:
    raise errors.InputError(
        f"classes_per_step must list at least one step, each with >= 1 class; got "
        f"{classes_per_step}")
  if magnitude not in MAGNITUDES:  # an unknown grouping is refused by group_membership
    raise errors.InputError(
        f"unknown gsc.magnitude {magnitude!r}; valid: {', '.join(MAGNITUDES)}")
  if not 0.0 <= ema_decay < 1.0:
    raise errors.InputError(f"gsc.ema_decay must be in [0, 1); got {ema_decay}")
  membership = group_membership(classes_per_step, grouping)
  steps = step_of_channel(classes_per_step)
  exponent = compensation_exponent(classes_per_step, use_exponent)
  weight_ranges = channel_weight_ranges(classes_per_step) if bound else None
  num_groups, num_steps = membership.shape[1], len(classes_per_step)

  def magnitudes_of(targets, logits):
    return gradient_magnitudes(targets, logits, magnitude, exponent, bound)

  def init_fn(params):
    del params  # the state depends on the step's groups, not on the gradients' shape
    zeros = jnp.zeros(num_steps, jnp.float32)
    return CompensationState(group_means=jnp.zeros(num_groups, jnp.float32),
                             group_seen=jnp.zeros(num_groups, bool),
                             weight_mean=zeros, weight_max=zeros, gradient_share=zeros)

  def update_fn(logit_gradients, state, params=None, *, targets, logits):
    del params
    magnitudes = magnitudes_of(targets, logits)
    sums, counts = group_statistics(targets, magnitudes, membership)
    group_means, group_seen = updated_group_means(state.group_means, state.group_seen, sums,
                                                  counts, ema_decay)
    weights = pixel_weights(targets, magnitudes, group_means, membership, weight_ranges)
    scaled = logit_gradients * weights[..., None].astype(logit_gradients.dtype)
    weight_mean, weight_max, gradient_share = step_diagnostics(targets, weights, scaled, steps)
    return scaled, CompensationState(group_means=group_means, group_seen=group_seen,
                                     weight_mean=weight_mean, weight_max=weight_max,
                                     gradient_share=gradient_share)

  def weights_fn(state, targets, logits):
    """The per-pixel weights [B, H, W] that ``update`` applied with the state it returned."""
    return pixel_weights(targets, magnitudes_of(targets, logits), state.group_means,
                         membership, weight_ranges)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn), weights_fn

"""GSC step-aware gradient compensation (docs/algorithm.md 5.1) on small random batches.

Main set-up: classes_per_step (3, 2, 1, 1), i.e. K = 7 channels, steps 0..3 with step 3
current: step 0 = {0, 1, 2}, step 1 = {3, 4}, step 2 = {5}, step 3 = {6}. Every expected
value comes from ``_reference_*``, an independent float64 NumPy transcription written as
loops over groups (the way FISS's and HFC's code write it), not from the module's
membership matrix.

Tolerances: the module computes in float32 and the reference in float64. A weight is
g / mean(g) over at most ~60 pixels: each float32 operation is within 6e-8 relative and
the sums add a few ulps, so the float32 result is within ~1e-6 relative of the float64
one; rtol = 1e-5 leaves a margin for any CPU's summation order. Values that are exactly
0 or 1 by construction are compared exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import compensation
from gsc_jax import errors

CLASSES_PER_STEP = (3, 2, 1, 1)
SHAPE = (2, 6, 5)
RTOL = 1e-5  # float32 against float64, see the module docstring
ATOL = 1e-7  # for entries that are 0 in float64 but a rounding residue in float32


def _num_channels(classes_per_step):
  return int(sum(classes_per_step))


def _batch(seed, classes_per_step=CLASSES_PER_STEP, absent_classes=(), num_ignored=4):
  """Random logits [2, 6, 5, K] (float32) and targets with a few 255s, avoiding
  ``absent_classes``; every other class is present."""
  rng = np.random.default_rng(seed)
  num_channels = _num_channels(classes_per_step)
  logits = rng.normal(scale=2.0, size=SHAPE + (num_channels,)).astype(np.float32)
  allowed = np.array([c for c in range(num_channels) if c not in absent_classes])
  flat = np.concatenate([allowed, rng.choice(allowed, size=int(np.prod(SHAPE)) - len(allowed))])
  targets = rng.permutation(flat).reshape(SHAPE).astype(np.int32)
  ignored = rng.choice(targets.size, num_ignored, replace=False)
  targets.reshape(-1)[ignored] = 255
  return logits, targets


def _cross_entropy_gradients(logits, targets):
  """d/dz of the mean over valid pixels of -log softmax(z)_y, in NumPy float32 (written here
  so that the tests do not depend on losses.py): (softmax - onehot) / #valid, 0 on 255."""
  logits = np.asarray(logits, np.float64)
  valid = targets != 255
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  one_hot = np.eye(logits.shape[-1])[np.where(valid, targets, 0)]
  gradients = (probabilities - one_hot) * valid[..., None] / max(valid.sum(), 1)
  return gradients.astype(np.float32)


# --- Independent NumPy transcription ---------------------------------------------------------

def _reference_steps(classes_per_step, targets):
  """Per pixel, the step of its target class; -1 for ignored pixels."""
  step_of_class = []
  for step, count in enumerate(classes_per_step):
    step_of_class += [step] * count
  steps = np.full(targets.shape, -1)
  for channel, step in enumerate(step_of_class):
    steps[targets == channel] = step
  return steps


def _reference_magnitudes(classes_per_step, logits, targets, magnitude, use_exponent, bound):
  """g per pixel in float64: (1 - p(y)) ** (K_old / K), then ln(1 + g) with the bound; 0 on
  ignored pixels."""
  num_channels = _num_channels(classes_per_step)
  zeta = (num_channels - classes_per_step[-1]) / num_channels if use_exponent else 1.0
  logits = np.asarray(logits, np.float64)
  g = np.zeros(targets.shape)
  for index in np.ndindex(targets.shape):
    y = targets[index]
    if y == 255:
      continue
    z = logits[index]
    if magnitude == "sigmoid":
      p = 1.0 / (1.0 + np.exp(-z[y]))
    else:
      p = np.exp(z[y] - z.max()) / np.sum(np.exp(z - z.max()))
    g[index] = min(max(1.0 - p, 0.0), 1.0) ** zeta
    if bound:
      g[index] = np.log(1.0 + g[index])
  return g


def _reference_group_masks(classes_per_step, grouping, targets):
  """The groups' pixel masks, in the module's documented column order."""
  steps = _reference_steps(classes_per_step, targets)
  current = len(classes_per_step) - 1
  masks = []
  if grouping == "fiss":
    if current >= 1:
      masks.append(steps == 0)
    for k in range(1, current):
      masks.append((steps >= 1) & (steps <= k))
  elif grouping == "step":
    for m in range(current):
      masks.append(steps == m)
  elif grouping == "old_new":
    masks.append((steps >= 0) & (steps < current))
    masks.append(steps == current)
  elif grouping == "class":
    for c in range(_num_channels(classes_per_step) - classes_per_step[-1]):
      masks.append(targets == c)
  return masks


def _reference_batch_means(g, masks):
  """Per group, mean of g over its pixels; NaN for a group without pixels."""
  return np.array([g[mask].mean() if mask.any() else np.nan for mask in masks])


def _reference_weights(classes_per_step, grouping, targets, g, means, bound):
  """w = sum over groups k containing the pixel of g / m_k (a group with m_k = 0 or NaN adds
  0); 1 for pixels in no group and ignored ones; then HFC's clip with the bound."""
  steps = _reference_steps(classes_per_step, targets)
  current = len(classes_per_step) - 1
  masks = _reference_group_masks(classes_per_step, grouping, targets)
  w = np.zeros(targets.shape)
  in_a_group = np.zeros(targets.shape, bool)
  for mask, mean in zip(masks, means):
    in_a_group |= mask
    if mask.any() and mean > 0:
      w += g * mask / mean
  if grouping != "old_new":  # the current step's classes are in no group there
    in_a_group |= steps == current
    w[steps == current] = 1.0
  w[steps == -1] = 1.0
  if bound:
    old = (steps >= 0) & (steps < current)
    w[old] = np.clip(w[old], 0.5, 1.2)
    new = steps == current
    w[new] = np.clip(w[new], 0.5, 1.0)
  return w


def _reference_diagnostics(classes_per_step, targets, w, scaled):
  steps = _reference_steps(classes_per_step, targets)
  mass = np.abs(np.asarray(scaled, np.float64)).sum(-1)
  total = mass.sum()
  mean, maximum, share = [], [], []
  for s in range(len(classes_per_step)):
    mask = steps == s
    mean.append(w[mask].mean() if mask.any() else 0.0)
    maximum.append(w[mask].max() if mask.any() else 0.0)
    share.append(mass[mask].sum() / total if total > 0 else 0.0)
  return np.array(mean), np.array(maximum), np.array(share)


def _update(transform, state, logits, targets, gradients=None):
  if gradients is None:
    gradients = _cross_entropy_gradients(logits, targets)
  scaled, new_state = transform.update(jnp.asarray(gradients), state, None,
                                       targets=jnp.asarray(targets), logits=jnp.asarray(logits))
  return gradients, np.asarray(scaled), new_state


# --- Tests -----------------------------------------------------------------------------------

def test_group_membership_matrices():
  """The membership matrices of every grouping for (3, 2, 1, 1) and at t = 1 and t = 0."""
  step0, step1, step2, step3 = [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0], \
      [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1]
  steps12 = list(np.add(step1, step2))
  cases = {"fiss": [step0, step1, steps12], "step": [step0, step1, step2],
           "old_new": [list(np.add(step0, steps12)), step3], "class": list(np.eye(7)[:6])}
  for grouping, columns in cases.items():
    membership = compensation.group_membership(CLASSES_PER_STEP, grouping)
    assert membership.dtype == np.float32
    np.testing.assert_array_equal(membership, np.array(columns, np.float32).T, err_msg=grouping)
  # t = 1: FISS has only the base group; t = 0: one empty column, never a zero-size state
  np.testing.assert_array_equal(compensation.group_membership((3, 2), "fiss"),
                                [[1], [1], [1], [0], [0]])
  for grouping in ("fiss", "step", "class"):
    np.testing.assert_array_equal(compensation.group_membership((3,), grouping), np.zeros((3, 1)))
  np.testing.assert_array_equal(compensation.group_membership((3,), "old_new"),
                                [[0, 1], [0, 1], [0, 1]])
  np.testing.assert_array_equal(compensation.step_of_channel(CLASSES_PER_STEP),
                                [0, 0, 0, 1, 1, 2, 3])
  assert compensation.compensation_exponent(CLASSES_PER_STEP) == 6 / 7
  assert compensation.compensation_exponent(CLASSES_PER_STEP, use_exponent=False) == 1.0


@pytest.mark.parametrize("grouping", compensation.GROUPINGS)
@pytest.mark.parametrize("magnitude,use_exponent,bound", [
    ("sigmoid", True, False), ("softmax", True, False), ("sigmoid", False, False),
    ("softmax", False, True), ("sigmoid", True, True)])
@pytest.mark.parametrize("classes_per_step", [CLASSES_PER_STEP, (3, 2, 1), (3, 2)])
def test_weights_match_numpy_transcription(grouping, magnitude, use_exponent, bound,
                                           classes_per_step):
  """Weights, scaled gradients, group means and diagnostics against the loop-based NumPy
  transcription, for every grouping, both magnitudes, exponent on/off and the bound, at
  t = 1, 2 and 3 (nested FISS groups from t = 2)."""
  logits, targets = _batch(1, classes_per_step)
  transform, weights_fn = compensation.gradient_compensation(
      classes_per_step, grouping, magnitude, use_exponent, bound)
  gradients, scaled, state = _update(transform, transform.init(None), logits, targets)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))

  g = _reference_magnitudes(classes_per_step, logits, targets, magnitude, use_exponent, bound)
  masks = _reference_group_masks(classes_per_step, grouping, targets)
  means = _reference_batch_means(g, masks)
  expected = _reference_weights(classes_per_step, grouping, targets, g, means, bound)
  np.testing.assert_allclose(state.group_means, means, rtol=RTOL)
  np.testing.assert_allclose(weights, expected, rtol=RTOL)
  np.testing.assert_allclose(scaled, gradients * expected[..., None], rtol=RTOL, atol=ATOL)
  assert not np.allclose(weights, 1.0)
  mean, maximum, share = _reference_diagnostics(classes_per_step, targets, expected, scaled)
  np.testing.assert_allclose(state.weight_mean, mean, rtol=RTOL)
  np.testing.assert_allclose(state.weight_max, maximum, rtol=RTOL)
  np.testing.assert_allclose(state.gradient_share, share, rtol=RTOL)
  np.testing.assert_allclose(np.sum(state.gradient_share), 1.0, rtol=RTOL)


def test_fiss_nested_groups_sum_their_terms():
  """At t = 3 a step-1 pixel gets g/m(G_1) + g/m(G_2), a step-2 pixel g/m(G_2), a step-0
  pixel g/m(B): written out with explicit means instead of the generic reference."""
  logits, targets = _batch(2)
  transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, "fiss")
  _, _, state = _update(transform, transform.init(None), logits, targets)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
  g = _reference_magnitudes(CLASSES_PER_STEP, logits, targets, "sigmoid", True, False)
  base = g[np.isin(targets, [0, 1, 2])].mean()
  nested1 = g[np.isin(targets, [3, 4])].mean()
  nested2 = g[np.isin(targets, [3, 4, 5])].mean()
  for c, expected in [(0, g / base), (2, g / base), (3, g / nested1 + g / nested2),
                      (4, g / nested1 + g / nested2), (5, g / nested2)]:
    mask = targets == c
    np.testing.assert_allclose(weights[mask], expected[mask], rtol=RTOL)
  assert np.all(weights[targets == 6] == 1.0) and np.all(weights[targets == 255] == 1.0)


@pytest.mark.parametrize("grouping", compensation.GROUPINGS)
def test_empty_group_contributes_zero(grouping):
  """No pixel of step 1 ({3, 4}): FISS's G_1, "step"'s step-1 group and those classes'
  groups are empty and add 0; everything stays finite and matches the reference."""
  logits, targets = _batch(3, absent_classes=(3, 4))
  transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, grouping)
  gradients, scaled, state = _update(transform, transform.init(None), logits, targets)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
  g = _reference_magnitudes(CLASSES_PER_STEP, logits, targets, "sigmoid", True, False)
  means = _reference_batch_means(g, _reference_group_masks(CLASSES_PER_STEP, grouping, targets))
  assert np.isnan(means).any() or grouping == "old_new"
  expected = _reference_weights(CLASSES_PER_STEP, grouping, targets, g, means, False)
  for value in (weights, scaled, state.group_means, state.weight_mean, state.gradient_share):
    assert np.all(np.isfinite(value))
  np.testing.assert_allclose(weights, expected, rtol=RTOL)
  np.testing.assert_allclose(state.group_means, np.nan_to_num(means), rtol=RTOL)
  np.testing.assert_array_equal(state.weight_mean[1], 0.0)
  np.testing.assert_array_equal(state.weight_max[1], 0.0)
  np.testing.assert_array_equal(state.gradient_share[1], 0.0)


@pytest.mark.parametrize("magnitude", compensation.MAGNITUDES)
@pytest.mark.parametrize("bound", [False, True])
def test_group_with_all_zero_magnitudes(magnitude, bound):
  """Step-1 pixels predicted with certainty (target logit 200, so p(y) = 1 and g = 0 in
  float32 and float64): "step"'s step-1 group has mean 0 and adds 0, so those pixels get
  w = 0 (0.5 with the bound, HFC's floor); nothing is NaN. In "fiss" the step-1 pixels
  also get g / m(G_2) = 0."""
  logits, targets = _batch(4)
  confident = np.isin(targets, [3, 4])
  for index in zip(*np.nonzero(confident)):
    logits[index + (targets[index],)] = 200.0
  floor = 0.5 if bound else 0.0
  for grouping in ("step", "fiss"):
    transform, weights_fn = compensation.gradient_compensation(
        CLASSES_PER_STEP, grouping, magnitude, bound=bound)
    gradients, scaled, state = _update(transform, transform.init(None), logits, targets)
    weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
    g = _reference_magnitudes(CLASSES_PER_STEP, logits, targets, magnitude, True, bound)
    assert np.all(g[confident] == 0.0)
    means = _reference_batch_means(g, _reference_group_masks(CLASSES_PER_STEP, grouping,
                                                             targets))
    expected = _reference_weights(CLASSES_PER_STEP, grouping, targets, g, means, bound)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(scaled))
    assert np.all(weights[confident] == floor)
    np.testing.assert_allclose(weights, expected, rtol=RTOL)
    np.testing.assert_allclose(scaled, gradients * expected[..., None], rtol=RTOL, atol=ATOL)
  assert float(state.group_means[1]) == 0.0  # fiss's G_1 = step 1 only


@pytest.mark.parametrize("grouping", compensation.GROUPINGS)
def test_only_void_pixels(grouping):
  """A batch of 255s only: weights 1, gradients unchanged, means stay 0, diagnostics 0."""
  logits, targets = _batch(5)
  targets[:] = 255
  gradients = np.random.default_rng(6).normal(size=logits.shape).astype(np.float32)
  transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, grouping,
                                                             bound=True, ema_decay=0.5)
  _, scaled, state = _update(transform, transform.init(None), logits, targets, gradients)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
  assert np.all(weights == 1.0)
  np.testing.assert_array_equal(scaled, gradients)
  for field in state:
    assert np.all(np.asarray(field) == 0)


def test_current_step_pixels_keep_weight_one_except_old_new():
  """"fiss", "step", "class": current-step and 255 pixels keep w = 1 exactly (gradients
  bitwise unchanged). "old_new" normalises them: their mean weight is 1."""
  logits, targets = _batch(7)
  keep = (targets == 6) | (targets == 255)
  for grouping in ("fiss", "step", "class"):
    transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, grouping)
    gradients, scaled, state = _update(transform, transform.init(None), logits, targets)
    weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
    assert np.all(weights[keep] == 1.0)
    np.testing.assert_array_equal(scaled[keep], gradients[keep])
    assert state.weight_mean[3] == 1.0 and state.weight_max[3] == 1.0
  transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, "old_new")
  _, _, state = _update(transform, transform.init(None), logits, targets)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
  assert not np.allclose(weights[targets == 6], 1.0)
  np.testing.assert_allclose(weights[targets == 6].mean(), 1.0, rtol=RTOL)
  np.testing.assert_allclose(weights[(targets != 255) & (targets < 6)].mean(), 1.0, rtol=RTOL)


def test_bound_follows_hfc_loop():
  """With grouping "step" the bound equals a literal transcription of HFC's
  gradient_balanced_weight (train.py of JiahuaDong/HFC), without its (1 - z) and
  sqrt(1 - z) loss-mixing factors: g = log(|p - onehot| ** z + 1) at the target, then per
  old task w += clamp(g * index / ((g * index).sum() / index.sum()), 0.5, 1.2) * index, and
  the same with [0.5, 1.0] for the new classes under "old_new" (HFC's index_new)."""
  logits, targets = _batch(8)
  logits *= 3.0  # spread g so that both ends of the clamp are reached
  valid = targets != 255
  y = np.where(valid, targets, 0)
  z = 6 / 7
  probabilities = np.exp(logits.astype(np.float64))
  probabilities /= probabilities.sum(-1, keepdims=True)
  one_hot = np.eye(7)[y]
  g_all = np.log(np.abs(probabilities - one_hot) ** z + 1.0)
  g = (g_all * one_hot).sum(-1) * valid

  def hfc_term(index, low, high):
    index = index.astype(np.float64)
    return np.clip(g * index / ((g * index).sum() / index.sum()), low, high) * index

  task_classes = [[0, 1, 2], [3, 4], [5]]
  expected_step = sum(hfc_term(np.isin(targets, classes), 0.5, 1.2) for classes in task_classes)
  expected_step[(targets == 6) | ~valid] = 1.0
  expected_old_new = hfc_term(np.isin(targets, [0, 1, 2, 3, 4, 5]), 0.5, 1.2) + hfc_term(
      targets == 6, 0.5, 1.0)
  expected_old_new[~valid] = 1.0
  for grouping, expected in (("step", expected_step), ("old_new", expected_old_new)):
    transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, grouping,
                                                               "softmax", bound=True)
    _, _, state = _update(transform, transform.init(None), logits, targets)
    weights = np.asarray(weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)))
    np.testing.assert_allclose(weights, expected, rtol=RTOL)
    assert np.any(weights == np.float32(0.5))
  # the last one ("old_new"): some new pixels clamped at 1.0, others not
  new_weights = weights[targets == 6]
  assert np.any(new_weights == 1.0) and np.any(new_weights < 1.0)
  assert np.any(expected_step == np.float64(1.2))  # the upper clamp was exercised too


@pytest.mark.parametrize("jit", [False, True])
def test_state_follows_batch_means_and_ema(jit):
  """Zeros at init (shapes from the groups alone); first update = batch means; then
  decay * old + (1 - decay) * batch for present groups, unchanged for absent ones; with
  decay 0 always the batch means. The weights use the updated means. Also under jit."""
  grouping = "fiss"
  for decay in (0.9, 0.0):
    transform, weights_fn = compensation.gradient_compensation(CLASSES_PER_STEP, grouping,
                                                               ema_decay=decay)
    update = jax.jit(transform.update) if jit else transform.update
    state = transform.init(None)
    assert state.group_means.shape == (3,) and state.weight_mean.shape == (4,)
    np.testing.assert_array_equal(state.group_means, np.zeros(3))
    assert not np.any(state.group_seen)
    previous = None
    for seed, absent in ((9, ()), (10, (3, 4)), (11, ())):
      logits, targets = _batch(seed, absent_classes=absent)
      gradients = _cross_entropy_gradients(logits, targets)
      scaled, state = update(jnp.asarray(gradients), state, None, targets=jnp.asarray(targets),
                             logits=jnp.asarray(logits))
      g = _reference_magnitudes(CLASSES_PER_STEP, logits, targets, "sigmoid", True, False)
      batch_means = _reference_batch_means(
          g, _reference_group_masks(CLASSES_PER_STEP, grouping, targets))
      if previous is None:
        expected = np.nan_to_num(batch_means)
      elif decay == 0.0:
        expected = np.where(np.isnan(batch_means), previous, batch_means)
      else:
        expected = np.where(np.isnan(batch_means), previous,
                            decay * previous + (1 - decay) * batch_means)
      np.testing.assert_allclose(state.group_means, expected, rtol=RTOL)
      weights = _reference_weights(CLASSES_PER_STEP, grouping, targets, g, expected, False)
      np.testing.assert_allclose(scaled, gradients * weights[..., None], rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(
          weights_fn(state, jnp.asarray(targets), jnp.asarray(logits)), weights, rtol=RTOL)
      previous = np.asarray(state.group_means, np.float64)
      assert np.isnan(batch_means[1]) == (seed == 10)  # only the second batch lacks G_1
    np.testing.assert_array_equal(state.group_seen, True)


@pytest.mark.parametrize("grouping,magnitude,use_exponent,bound,ema_decay", [
    ("fiss", "sigmoid", True, False, 0.0), ("step", "softmax", True, False, 0.0),
    ("old_new", "sigmoid", False, True, 0.0), ("fiss", "softmax", True, True, 0.9)])
def test_scaled_pullback_equals_weighted_loss_gradient(grouping, magnitude, use_exponent,
                                                       bound, ema_decay):
  """vjp of the transformed CE logit gradient == grad of the CE with constant weights w_i."""
  rng = np.random.default_rng(12)
  features = jnp.asarray(rng.normal(size=SHAPE + (3,)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=(3, 7)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
  _, targets = _batch(13)
  targets = jnp.asarray(targets)
  image_weights = jnp.asarray([0.7, 1.0], jnp.float32)

  def forward(params):
    return jnp.einsum("bhwd,dk->bhwk", features, params["w"]) + params["b"]

  def cross_entropy(logits, pixel_weights):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.where(targets == 255, 0, targets)[..., None],
                                 axis=-1)[..., 0]
    per_pixel = -image_weights[:, None, None] * pixel_weights * picked
    return jnp.mean(jnp.where(targets == 255, 0.0, per_pixel))

  transform, weights_fn = compensation.gradient_compensation(
      CLASSES_PER_STEP, grouping, magnitude, use_exponent, bound, ema_decay)
  state = transform.init(None)
  if ema_decay > 0:  # a previous batch so that the EMA blends two measurements
    _, _, state = _update(transform, state, *_batch(14))
  logits, pullback = jax.vjp(forward, params)
  logit_gradients = jax.grad(cross_entropy)(logits, jnp.ones(SHAPE))
  scaled, new_state = transform.update(logit_gradients, state, None, targets=targets,
                                       logits=jax.lax.stop_gradient(logits))
  (via_transform,) = pullback(scaled)

  weights = jax.lax.stop_gradient(weights_fn(new_state, targets, logits))
  assert not np.allclose(weights, 1.0)
  direct = jax.grad(lambda params: cross_entropy(forward(params), weights))(params)
  for name in params:
    # both sides are float32 sums of the same ~60 products in different orders
    np.testing.assert_allclose(via_transform[name], direct[name], rtol=RTOL, atol=ATOL)


def test_invalid_arguments_raise_input_error_listing_valid_values():
  with pytest.raises(errors.InputError, match="fiss, step, old_new, class"):
    compensation.gradient_compensation(CLASSES_PER_STEP, grouping="cumulative")
  with pytest.raises(errors.InputError, match="sigmoid, softmax"):
    compensation.gradient_compensation(CLASSES_PER_STEP, magnitude="tanh")
  with pytest.raises(errors.InputError, match="ema_decay"):
    compensation.gradient_compensation(CLASSES_PER_STEP, ema_decay=1.0)
  with pytest.raises(errors.InputError):
    compensation.gradient_compensation(())
  with pytest.raises(errors.InputError, match="fiss"):
    compensation.group_membership(CLASSES_PER_STEP, "bogus")


def test_step_zero_is_identity_without_old_classes():
  """At t = 0 (no old class, zeta = 0 so g = 1 for every valid pixel): every grouping
  leaves the gradients unchanged, and the state keeps fixed non-empty shapes."""
  logits, targets = _batch(15, (4,))
  for grouping in compensation.GROUPINGS:
    transform, _ = compensation.gradient_compensation((4,), grouping)
    gradients, scaled, state = _update(transform, transform.init(None), logits, targets)
    np.testing.assert_allclose(scaled, gradients, rtol=RTOL)
    assert state.group_means.shape[0] >= 1 and state.weight_mean.shape == (1,)


def test_first_mean_weight_per_class():
  """losses.mean_weight_per_class as the first reconstruction uses it: per old class c, the
  mean weight of its pixels; 1 for a class with no pixel."""
  from gsc_jax import losses
  rng = np.random.default_rng(16)
  _, targets = _batch(17, (3, 2, 1), absent_classes=(2,))
  weights = rng.uniform(0.1, 3.0, size=SHAPE).astype(np.float32)
  result = np.asarray(losses.mean_weight_per_class(jnp.asarray(targets),
                                                   jnp.asarray(weights), 5, empty_value=1.0))
  expected = [weights[targets == c].mean() if (targets == c).any() else 1.0 for c in range(5)]
  assert not (targets == 2).any() and (targets == 5).any()
  np.testing.assert_allclose(result, expected, rtol=RTOL)
  assert result[2] == 1.0

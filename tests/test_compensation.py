"""GSC step-aware gradient compensation (docs/algorithm.md 5.1) on small random batches.

Set-up: K = 6 channels from classes_per_step (3, 2, 1), i.e. steps 0..2 with step 2 current;
per-step groups are {0, 1, 2} -> 0, {3, 4} -> 1, {5} -> 2 (current).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import compensation
from gsc_jax import losses
from gsc_jax.methods import gsc

CLASSES_PER_STEP = (3, 2, 1)
K = 6
SHAPE = (2, 4, 5)
GROUPS = np.array([0, 0, 0, 1, 1, 2])
IS_CURRENT = np.array([False, False, True])


def _batch(seed, absent_classes=(), num_ignored=3):
  """Random logits [2, 4, 5, K] and targets with a few 255s, avoiding ``absent_classes``."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=SHAPE + (K,)).astype(np.float32)
  allowed = np.array([c for c in range(K) if c not in absent_classes])
  targets = rng.choice(allowed, size=SHAPE).astype(np.int32)
  targets.reshape(-1)[rng.choice(targets.size, num_ignored, replace=False)] = 255
  return logits, targets


def _numpy_group_means(targets, probabilities, exponent):
  """Batch mean of g^zeta per group (NaN for an absent group), computed independently."""
  means = np.full(len(IS_CURRENT), np.nan)
  for group in range(len(IS_CURRENT)):
    mask = (targets != 255) & np.isin(targets, np.flatnonzero(GROUPS == group))
    if mask.any():
      p_target = np.take_along_axis(probabilities, targets[..., None] * (targets[..., None] != 255),
                                    axis=-1)[..., 0]
      means[group] = np.mean((1.0 - p_target[mask]) ** exponent)
  return means


def _update(transform, state, logits, targets, magnitude="softmax"):
  probabilities = compensation.class_probabilities(jnp.asarray(logits), magnitude)
  gradients = jax.grad(losses.weighted_cross_entropy)(
      jnp.asarray(logits), jnp.asarray(targets), jnp.ones(SHAPE[0]))
  scaled, new_state = transform.update(gradients, state, None, targets=jnp.asarray(targets),
                                       probabilities=probabilities)
  return gradients, scaled, new_state, probabilities


@pytest.mark.parametrize("magnitude,exponent,ema_decay", [
    ("softmax", 1.0, 0.0), ("softmax", 0.5, 0.0), ("sigmoid", 0.7, 0.0), ("softmax", 0.5, 0.9)])
def test_scaled_pullback_equals_weighted_loss_gradient(magnitude, exponent, ema_decay):
  """vjp of the transformed CE logit gradient == grad of the CE with constant weights w_i."""
  rng = np.random.default_rng(1)
  features = jnp.asarray(rng.normal(size=SHAPE + (3,)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=(3, K)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}
  _, targets = _batch(2)
  targets = jnp.asarray(targets)
  nu = jnp.asarray([0.7, 1.0], jnp.float32)

  def forward(params):
    return jnp.einsum("bhwd,dk->bhwk", features, params["w"]) + params["b"]

  transform, weights_fn = compensation.gradient_compensation(GROUPS, IS_CURRENT, exponent,
                                                             ema_decay)
  state = transform.init(None)
  if ema_decay > 0:  # a previous batch so that the EMA blends two measurements
    _, _, state, _ = _update(transform, state, *_batch(3), magnitude)
  logits, pullback = jax.vjp(forward, params)
  probabilities = compensation.class_probabilities(jax.lax.stop_gradient(logits), magnitude)
  logit_gradients = jax.grad(losses.weighted_cross_entropy)(logits, targets, nu)
  scaled, new_state = transform.update(logit_gradients, state, None, targets=targets,
                                       probabilities=probabilities)
  (via_transform,) = pullback(scaled)

  weights = jax.lax.stop_gradient(weights_fn(new_state, targets, probabilities))
  assert not np.allclose(weights, 1.0)

  def weighted_loss(params):
    log_p = jax.nn.log_softmax(forward(params), axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.where(targets == 255, 0, targets)[..., None],
                                 axis=-1)[..., 0]
    per_pixel = -nu[:, None, None] * weights * picked
    return jnp.mean(jnp.where(targets == 255, 0.0, per_pixel))

  direct = jax.grad(weighted_loss)(params)
  for name in params:
    np.testing.assert_allclose(via_transform[name], direct[name], rtol=1e-5, atol=1e-7)


def test_current_and_ignored_pixels_keep_weight_one_and_old_groups_average_one():
  """w = 1 exactly (and gradients bitwise unchanged) for current-step and 255 pixels; old
  weights vary, and with ema_decay = 0 they average to 1 within each old group."""
  logits, targets = _batch(4)
  transform, weights_fn = compensation.gradient_compensation(GROUPS, IS_CURRENT, 0.5, 0.0)
  gradients, scaled, state, probabilities = _update(transform, transform.init(None), logits,
                                                    targets)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), probabilities))
  keep = (targets == 5) | (targets == 255)
  assert (targets == 5).any() and (targets == 255).any()
  assert np.all(weights[keep] == 1.0)
  np.testing.assert_array_equal(np.asarray(scaled)[keep], np.asarray(gradients)[keep])
  old = ~keep
  assert not np.allclose(weights[old], 1.0)
  np.testing.assert_allclose(np.asarray(scaled)[old],
                             np.asarray(gradients)[old] * weights[old][:, None], rtol=1e-6)
  for group in (0, 1):
    mask = np.isin(targets, np.flatnonzero(GROUPS == group))
    np.testing.assert_allclose(weights[mask].mean(), 1.0, rtol=1e-5)


def test_absent_group_keeps_its_estimate_and_saturated_pixels_give_zero_weight():
  """No pixel of group 1: finite output, group 1's mean unchanged. g = 0 everywhere: w = 0."""
  transform, weights_fn = compensation.gradient_compensation(GROUPS, IS_CURRENT, 0.5, 0.5)
  _, _, state, _ = _update(transform, transform.init(None), *_batch(5))
  assert bool(state.group_seen[1]) and float(state.group_means[1]) > 0
  _, scaled, new_state, probabilities = _update(transform, state, *_batch(6, absent_classes=(3, 4)))
  assert np.all(np.isfinite(scaled))
  assert np.all(np.isfinite(new_state.group_means))
  assert float(new_state.group_means[1]) == float(state.group_means[1])
  assert float(new_state.group_means[0]) != float(state.group_means[0])

  logits, targets = _batch(7)
  one_hot = jax.nn.one_hot(jnp.where(targets == 255, 0, targets), K)  # p(y) = 1 exactly
  fresh, weights_fn = compensation.gradient_compensation(GROUPS, IS_CURRENT, 0.5, 0.0)
  gradients = jax.grad(losses.weighted_cross_entropy)(
      jnp.asarray(logits), jnp.asarray(targets), jnp.ones(2))
  scaled, state = fresh.update(gradients, fresh.init(None), None, targets=jnp.asarray(targets),
                               probabilities=one_hot)
  weights = np.asarray(weights_fn(state, jnp.asarray(targets), one_hot))
  assert np.all(np.isfinite(scaled)) and np.all(np.isfinite(state.group_means))
  old = (targets != 255) & (targets < 5)
  assert np.all(weights[old] == 0.0) and np.all(np.asarray(scaled)[old] == 0.0)


@pytest.mark.parametrize("jit", [False, True])
def test_state_follows_batch_means_and_ema(jit):
  """Zeros at init; first update = batch means; then 0.9 * old + 0.1 * batch for present
  groups, unchanged for absent ones; with decay 0 always the batch means. Also under jit."""
  exponent = 0.5
  for decay in (0.9, 0.0):
    transform, _ = compensation.gradient_compensation(GROUPS, IS_CURRENT, exponent, decay)
    update = jax.jit(transform.update) if jit else transform.update
    state = transform.init(None)
    np.testing.assert_array_equal(state.group_means, np.zeros(3))
    assert not np.any(state.group_seen)
    previous = None
    for seed, absent in ((8, ()), (9, (3, 4))):
      logits, targets = _batch(seed, absent)
      probabilities = compensation.class_probabilities(jnp.asarray(logits), "softmax")
      _, state = update(jnp.ones(SHAPE + (K,)), state, None, targets=jnp.asarray(targets),
                        probabilities=probabilities)
      batch_means = _numpy_group_means(targets, np.asarray(probabilities), exponent)
      if previous is None or decay == 0.0:
        expected = np.where(np.isnan(batch_means), 0.0 if previous is None else previous,
                            batch_means)
      else:
        expected = np.where(np.isnan(batch_means), previous,
                            decay * previous + (1 - decay) * batch_means)
      np.testing.assert_allclose(state.group_means, expected, rtol=1e-5)
      np.testing.assert_array_equal(state.group_seen, True)
      previous = np.asarray(state.group_means)
    assert np.isnan(batch_means[1])  # the second batch really lacked group 1


def test_group_of_channel():
  """Step, cumulative and per-class groupings for (3, 2, 1); unknown grouping raises."""
  groups, current = compensation.group_of_channel(CLASSES_PER_STEP, "step")
  np.testing.assert_array_equal(groups, [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(current, [False, False, True])
  assert groups.dtype == np.int32
  groups, current = compensation.group_of_channel(CLASSES_PER_STEP, "cumulative")
  np.testing.assert_array_equal(groups, [0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(current, [False, True])
  groups, current = compensation.group_of_channel(CLASSES_PER_STEP, "class")
  np.testing.assert_array_equal(groups, np.arange(6))
  np.testing.assert_array_equal(current, [False] * 5 + [True])
  with pytest.raises(ValueError):
    compensation.group_of_channel(CLASSES_PER_STEP, "bogus")


def test_mean_weight_per_class():
  """Per old class, the mean weight of its pixels; 1 for a class with no pixel."""
  rng = np.random.default_rng(10)
  _, targets = _batch(11, absent_classes=(2,))
  weights = rng.uniform(0.1, 3.0, size=SHAPE).astype(np.float32)
  result = np.asarray(gsc.mean_weight_per_class(jnp.asarray(targets), jnp.asarray(weights),
                                                    5))
  expected = [weights[targets == c].mean() if (targets == c).any() else 1.0 for c in range(5)]
  assert not (targets == 2).any() and (targets == 5).any()
  # float32 means of 6 to 8 weights, summed in XLA's order against NumPy's: each side can
  # be a few ulps off (~5e-7 relative); 1e-5 keeps a margin for any CPU's summation.
  np.testing.assert_allclose(result, expected, rtol=1e-5)
  assert result[2] == 1.0

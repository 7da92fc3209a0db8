"""Losses against hand-written numpy versions of their formulas on small random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import losses


def _logsumexp(x, axis=-1):
  peak = x.max(axis=axis, keepdims=True)
  return (peak + np.log(np.exp(x - peak).sum(axis=axis, keepdims=True)))[..., 0]


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 3, 4))
  labels[0, 0, :2] = 255
  return logits, labels


def test_cross_entropy_by_hand(batch):
  logits, labels = batch
  expected = 0.0
  for index in np.ndindex(labels.shape):
    if labels[index] != 255:
      z = logits[index]
      expected += _logsumexp(z) - z[labels[index]]
  expected /= labels.size  # mean over ALL pixels, ignored ones included
  assert np.isclose(losses.cross_entropy(logits, labels), expected, rtol=1e-5)


def test_cross_entropy_two_pixel_case():
  logits = np.array([[[[0.0, np.log(3.0)], [0.0, 0.0]]]], np.float32)  # [1, 1, 2, 2]
  labels = np.array([[[1, 255]]])
  # p(1) = 3 / 4 at the first pixel; the second is ignored but counted in the mean.
  # float32 exp / log (XLA's own approximations, a few ulps, CPU-dependent) against float64:
  # measured 1.6e-7 relative; 1e-5 leaves a margin and still pins the formula.
  assert np.isclose(losses.cross_entropy(logits, labels), -np.log(0.75) / 2, rtol=1e-5)


def test_unbiased_cross_entropy_by_hand(batch):
  logits, labels = batch
  num_old = 3
  expected = 0.0
  for index in np.ndindex(labels.shape):
    label = labels[index]
    if label == 255:
      continue
    z = logits[index]
    if label < num_old:  # old classes and background merge into background
      expected += _logsumexp(z) - _logsumexp(z[:num_old])
    else:
      expected += _logsumexp(z) - z[label]
  expected /= labels.size
  value = losses.unbiased_cross_entropy(logits, labels, num_old)
  assert np.isclose(value, expected, rtol=1e-5)


def test_unbiased_cross_entropy_with_one_old_class_is_plain(batch):
  logits, labels = batch
  labels = np.where(labels == 255, 255, np.maximum(labels, 0))
  # Two float32 formulas of the same value (z_0 - logsumexp(z) against log_softmax): they
  # may round differently by a few ulps; 1e-5 is far below any formula difference.
  assert np.isclose(losses.unbiased_cross_entropy(logits, labels, 1),
                    losses.cross_entropy(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_unbiased_distillation_by_hand(batch, alpha):
  logits, _ = batch  # 5 student channels
  rng = np.random.default_rng(1)
  teacher = rng.normal(size=logits.shape[:-1] + (3,)).astype(np.float32)
  num_old = 3
  expected = 0.0
  for index in np.ndindex(logits.shape[:-1]):
    z, t = logits[index], alpha * teacher[index]
    q = np.exp(t - _logsumexp(t))
    log_p = np.empty(num_old)
    log_p[0] = _logsumexp(np.concatenate([z[:1], z[num_old:]])) - _logsumexp(z)
    log_p[1:] = z[1:num_old] - _logsumexp(z)
    expected += -(q * log_p).sum() / num_old
  expected /= np.prod(logits.shape[:-1])
  value = losses.unbiased_distillation(logits, teacher, alpha)
  assert np.isclose(value, expected, rtol=1e-5)


def test_distillation_is_minimal_when_student_matches_teacher_on_old_space():
  # Student with the same old logits and no mass on new classes vs a perturbed student.
  teacher = np.array([[[[2.0, 0.0, -1.0]]]], np.float32)
  matched = np.concatenate([teacher, np.full((1, 1, 1, 1), -30.0, np.float32)], axis=-1)
  perturbed = matched + np.array([0.0, 1.0, 0.0, 0.0], np.float32)
  assert losses.unbiased_distillation(matched, teacher) < losses.unbiased_distillation(
      perturbed, teacher)


def test_losses_are_differentiable_and_finite(batch):
  logits, labels = batch
  gradient = jax.grad(lambda z: losses.unbiased_cross_entropy(z, labels, 3))(jnp.asarray(logits))
  assert np.all(np.isfinite(gradient))
  # Ignored pixels get no gradient.
  assert np.all(gradient[0, 0, :2] == 0)

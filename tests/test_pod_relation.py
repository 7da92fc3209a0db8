"""PLOP's Local POD and GSC's relation losses (docs/algorithm.md 4 and 5.2) against plain-loop
NumPy references written from the specification, not from the library code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import losses


# --- NumPy references ------------------------------------------------------------------------

def _log_softmax(z):
  z = np.asarray(z, np.float64)
  peak = z.max(axis=-1, keepdims=True)
  return z - peak - np.log(np.exp(z - peak).sum(axis=-1, keepdims=True))


def _softmax(z):
  return np.exp(_log_softmax(z))


def _logsumexp(values):
  values = np.asarray(values, np.float64)
  peak = values.max()
  return peak + np.log(np.exp(values - peak).sum())


def _pod_embedding_reference(features, scales=(1, 2, 4)):
  """Per image: for each scale, for each tile (rows i, then columns j), the width-pooled
  profile (row by row, channels inside) then the height-pooled profile (column by column,
  channels inside) of the squared tensor. Plain loops."""
  x = np.asarray(features, np.float64) ** 2
  batch, height, width, channels = x.shape
  embeddings = []
  for b in range(batch):
    values = []
    for s in scales:
      tile_h, tile_w = height // s, width // s
      for i in range(s):
        for j in range(s):
          rows = range(i * tile_h, (i + 1) * tile_h)
          cols = range(j * tile_w, (j + 1) * tile_w)
          for r in rows:  # mean over width: one value per (row, channel)
            for c in range(channels):
              values.append(sum(x[b, r, q, c] for q in cols) / tile_w)
          for q in cols:  # mean over height: one value per (column, channel)
            for c in range(channels):
              values.append(sum(x[b, r, q, c] for r in rows) / tile_h)
    embeddings.append(values)
  return np.array(embeddings)


def _pod_distance_reference(student, teacher, scales=(1, 2, 4)):
  """Mean over the batch of the per-image L2 norm (not squared) of the embedding gap."""
  a = _pod_embedding_reference(student, scales)
  b = _pod_embedding_reference(teacher, scales)
  norms = [np.sqrt(np.sum((a[n] - b[n]) ** 2)) for n in range(len(a))]
  return float(np.mean(norms))


def _old_space_reference(logits, num_old):
  logits = np.asarray(logits, np.float64)
  out = logits[..., :num_old].copy()
  out[..., 0] = logits[..., 0] + logits[..., num_old:].sum(axis=-1)
  return out


def _unkd_reference(logits, teacher_logits):
  """MiB's unbiased distillation (docs/algorithm.md 3), pixel by pixel."""
  logits = np.asarray(logits, np.float64)
  teacher_logits = np.asarray(teacher_logits, np.float64)
  num_old = teacher_logits.shape[-1]
  total = 0.0
  for index in np.ndindex(logits.shape[:-1]):
    z, q = logits[index], _softmax(teacher_logits[index])
    normaliser = _logsumexp(z)
    logp = np.empty(num_old)
    logp[0] = _logsumexp(np.concatenate([z[:1], z[num_old:]])) - normaliser
    logp[1:] = z[1:num_old] - normaliser
    total += -np.sum(q * logp) / num_old
  return total / np.prod(logits.shape[:-1])


# --- Local POD embedding and distance --------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 6, 4, 2)])
def test_local_pod_embedding_matches_loops(shape):
  """The embedding equals the loop reference value by value, in the implemented order
  (per scale, per tile row-major: width-pooled profile, then height-pooled profile)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=shape).astype(np.float32)
  got = np.asarray(losses.local_pod_embedding(jnp.asarray(x), (1, 2, 4)))
  expected = _pod_embedding_reference(x)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_local_pod_embedding_size_and_scale_one():
  """Size = sum_s s^2 * C * (h/s + w/s); at scale 1 it is the row and column means of x^2."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 6, 4, 2)).astype(np.float32)
  got = np.asarray(losses.local_pod_embedding(jnp.asarray(x), (1,)))
  assert got.shape == (1, 2 * (6 + 4))
  squared = x.astype(np.float64) ** 2
  np.testing.assert_allclose(np.sort(got[0]),
                             np.sort(np.concatenate([squared[0].mean(axis=1).ravel(),
                                                     squared[0].mean(axis=0).ravel()])),
                             rtol=1e-5)
  full = np.asarray(losses.local_pod_embedding(jnp.asarray(x), (1, 2, 4)))
  assert full.shape == (1, 2 * (6 + 4) + 4 * 2 * (3 + 2) + 16 * 2 * (1 + 1))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 6, 4, 2)])
def test_local_pod_distance_matches_reference(shape):
  """mean_b ||embed(a_b) - embed(b_b)||_2 with the norm not squared; the sign of the inputs
  does not matter (they are squared first)."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=shape).astype(np.float32)
  b = rng.normal(size=shape).astype(np.float32)
  got = float(losses.local_pod_distance(jnp.asarray(a), jnp.asarray(b)))
  assert np.isclose(got, _pod_distance_reference(a, b), rtol=1e-5)
  assert np.isclose(float(losses.local_pod_distance(jnp.asarray(-a), jnp.asarray(b))), got,
                    rtol=1e-5)
  assert float(losses.local_pod_distance(jnp.asarray(a), jnp.asarray(a))) == 0.0


def test_local_pod_distance_is_per_image_norm_then_mean():
  """Two images, only the second differs: the distance is half that image's norm (a mean of
  norms, not the norm over the whole batch nor a squared norm)."""
  rng = np.random.default_rng(4)
  a = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
  b = a.copy()
  b[1] = 2.0 * b[1]
  single = float(losses.local_pod_distance(jnp.asarray(a[1:]), jnp.asarray(b[1:])))
  both = float(losses.local_pod_distance(jnp.asarray(a), jnp.asarray(b)))
  assert single > 0
  assert np.isclose(both, single / 2, rtol=1e-6)


# --- logits in the old label space and the six-tensor Local POD ------------------------------

def test_logits_in_old_space_by_hand():
  """K = 5, K_old = 3: [1, 2, 3, 4, 5] -> [1 + 4 + 5, 2, 3]."""
  logits = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, -1.0, 2.0, -3.0, 0.25]])
  got = np.asarray(losses.logits_in_old_space(logits, 3))
  np.testing.assert_allclose(got, [[10.0, 2.0, 3.0], [-2.25, -1.0, 2.0]], rtol=1e-6)


def _pod_outputs(rng, batch, num_classes):
  shapes = [(batch, 8, 8, 3), (batch, 4, 4, 5), (batch, 4, 4, 6), (batch, 4, 4, 4)]
  return {
      "stages": [rng.normal(size=shape).astype(np.float32) for shape in shapes],
      "head": rng.normal(size=(batch, 4, 4, 7)).astype(np.float32),
      "logits_low": rng.normal(size=(batch, 4, 4, num_classes)).astype(np.float32),
  }


def test_local_pod_is_zero_for_identical_outputs():
  """Student == teacher (with the new channels of the logits at 0, so the old-space logits
  coincide) gives exactly 0."""
  rng = np.random.default_rng(5)
  teacher = _pod_outputs(rng, 2, 3)
  student = {key: value for key, value in teacher.items()}
  student["logits_low"] = np.concatenate(
      [teacher["logits_low"], np.zeros((2, 4, 4, 2), np.float32)], axis=-1)
  assert float(losses.local_pod(student, teacher, 3, 2)) == 0.0


def test_local_pod_matches_reference():
  """(1/6) sqrt(K/N) (0.01 * sum of the 4 stage + head distances + 0.0005 * the distance of
  the logits, the student's mapped to the old space); also with ADE-style weights."""
  rng = np.random.default_rng(6)
  num_old, num_new = 3, 2
  teacher = _pod_outputs(rng, 2, num_old)
  student = _pod_outputs(rng, 2, num_old + num_new)
  features = [_pod_distance_reference(s, t)
              for s, t in zip(student["stages"] + [student["head"]],
                              teacher["stages"] + [teacher["head"]])]
  logits_distance = _pod_distance_reference(
      _old_space_reference(student["logits_low"], num_old), teacher["logits_low"])
  factor = np.sqrt((num_old + num_new) / num_new) / 6
  expected = factor * (0.01 * sum(features) + 0.0005 * logits_distance)
  got = float(losses.local_pod(student, teacher, num_old, num_new))
  assert np.isclose(got, expected, rtol=1e-5)
  expected_ade = factor * (0.001 * sum(features) + 1e-5 * logits_distance)
  got_ade = float(losses.local_pod(student, teacher, num_old, num_new,
                                   feature_weight=0.001, logits_weight=1e-5))
  assert np.isclose(got_ade, expected_ade, rtol=1e-5)


def test_local_pod_logits_term_uses_background_plus_new_channels():
  """Only the logits differ: the student's background channel minus the new channels
  reproduces the teacher, so the loss is 0; shifting one new channel makes it positive."""
  rng = np.random.default_rng(7)
  teacher = _pod_outputs(rng, 2, 3)
  new_channels = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  student_logits = np.concatenate([teacher["logits_low"], new_channels], axis=-1)
  student_logits[..., 0] -= new_channels.sum(axis=-1)
  student = dict(teacher, logits_low=student_logits)
  assert np.isclose(float(losses.local_pod(student, teacher, 3, 2)), 0.0, atol=1e-7)
  shifted = student_logits.copy()
  shifted[..., 4] += 1.0
  loss = float(losses.local_pod(dict(student, logits_low=shifted), teacher, 3, 2))
  expected = (np.sqrt(5 / 2) / 6 * 0.0005
              * _pod_distance_reference(_old_space_reference(shifted, 3), teacher["logits_low"]))
  assert loss > 0 and np.isclose(loss, expected, rtol=1e-5)


# --- weighted cross-entropy -------------------------------------------------------------------

@pytest.fixture
def small_batch():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 3, 4))
  labels[0, 0, :2] = 255
  labels[1, 2, 3] = 255
  return logits, labels


def _weighted_ce_reference(logits, labels, nu):
  total = 0.0
  for index in np.ndindex(labels.shape):
    if labels[index] != 255:
      total += -nu[index[0]] * _log_softmax(logits[index])[labels[index]]
  return total / labels.size


def test_weighted_cross_entropy_with_unit_weights_is_cross_entropy(small_batch):
  """nu = 1 for every image gives the plain cross-entropy."""
  logits, labels = small_batch
  got = losses.weighted_cross_entropy(logits, labels, jnp.ones(2))
  assert np.isclose(float(got), float(losses.cross_entropy(logits, labels)), rtol=1e-6)


@pytest.mark.parametrize("nu", [[0.0, 1.0], [0.25, 2.0]])
def test_weighted_cross_entropy_matches_reference(small_batch, nu):
  """Each image's per-pixel CE times its nu, averaged over ALL pixels (ignored give 0)."""
  logits, labels = small_batch
  nu = np.array(nu, np.float32)
  got = float(losses.weighted_cross_entropy(logits, labels, jnp.asarray(nu)))
  assert np.isclose(got, _weighted_ce_reference(logits, labels, nu), rtol=1e-5)
  if nu[0] == 0.0:  # only the second image counts, still divided by both images' pixels
    alone = float(losses.cross_entropy(logits[1:], labels[1:]))
    assert np.isclose(got, alone / 2, rtol=1e-5)


# --- soft labels, sharpening --------------------------------------------------------------------

def _soft_label_reference(logits, labels, teacher_logits):
  num_classes, num_old = logits.shape[-1], teacher_logits.shape[-1]
  total = 0.0
  for index in np.ndindex(labels.shape):
    if labels[index] == 255:
      continue
    v = np.zeros(num_classes)
    v[labels[index]] = 1.0
    v[:num_old] = 1.0 / (1.0 + np.exp(-np.asarray(teacher_logits[index], np.float64)))
    soft = _softmax(v)
    total += -np.mean(soft * _log_softmax(logits[index]))
  return total / labels.size


def test_soft_label_loss_matches_reference():
  """Targets softmax(one-hot with sigmoid(z_old) in the old entries), loss -mean_c over K
  channels, averaged over all pixels; labels of old, new and void classes present."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
  teacher_logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 3, 3))
  labels[0, 0, 0] = 255
  labels[1, 1, :] = 255
  got = float(losses.soft_label_loss(logits, labels, teacher_logits))
  assert np.isclose(got, _soft_label_reference(logits, labels, teacher_logits), rtol=1e-5)


def test_soft_label_loss_by_hand_one_pixel():
  """K = 2, K_old = 1, label 1, teacher logit 0: v = [0.5, 1]; soft = softmax(v)."""
  logits = np.array([[[[1.0, -1.0]]]], np.float32)
  labels = np.array([[[1]]])
  teacher_logits = np.zeros((1, 1, 1, 1), np.float32)
  soft = np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
  logp = np.array([1.0, -1.0]) - np.log(np.exp(1.0) + np.exp(-1.0))
  expected = -np.mean(soft * logp)
  # float32 sigmoid / exp / log against float64: a few ulps, which depend on the CPU
  # (measured 9e-8 relative); 1e-5 leaves a margin and still pins the formula.
  assert np.isclose(float(losses.soft_label_loss(logits, labels, teacher_logits)), expected,
                    rtol=1e-5)


def test_sharpening_loss_matches_reference():
  """Per pixel -(1/K) sum_c p log p of the student; uniform logits give log(K)/K, one-hot
  logits almost 0."""
  rng = np.random.default_rng(10)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  p = _softmax(logits)
  expected = np.mean(-np.mean(p * np.log(p), axis=-1))
  assert np.isclose(float(losses.sharpening_loss(logits)), expected, rtol=1e-5)
  assert np.isclose(float(losses.sharpening_loss(jnp.zeros((1, 2, 2, 4)))), np.log(4) / 4,
                    rtol=1e-6)
  peaked = jnp.zeros((1, 2, 2, 4)).at[..., 1].set(50.0)
  assert float(losses.sharpening_loss(peaked)) < 1e-12


# --- class relation consistency -----------------------------------------------------------------

def _relation_reference(logits, labels, teacher_logits, class_weights):
  p, q = _softmax(logits), _softmax(teacher_logits)
  predicted = np.argmax(logits, axis=-1)
  student_confidence, teacher_confidence = p.max(axis=-1), q.max(axis=-1)
  total, present = 0.0, 0
  for c in range(teacher_logits.shape[-1]):
    student_mask, teacher_mask = predicted == c, labels == c
    if not student_mask.any() or not teacher_mask.any():
      continue
    a = student_confidence[student_mask].mean()
    b = teacher_confidence[teacher_mask].mean()
    total += class_weights[c] * abs(a - b)
    present += 1
  return total / present if present else 0.0


def test_class_relation_loss_matches_reference_random():
  """Random logits and labels (with void): the loop reference, weights of 1 and random."""
  rng = np.random.default_rng(11)
  logits = rng.normal(size=(2, 4, 4, 5)).astype(np.float32) * 2
  teacher_logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32) * 2
  labels = rng.integers(0, 5, size=(2, 4, 4))
  labels[0, 0] = 255
  for weights in (np.ones(3, np.float32), rng.uniform(0.5, 2.0, size=3).astype(np.float32)):
    got = float(losses.class_relation_loss(logits, labels, teacher_logits, weights))
    expected = _relation_reference(logits, labels, teacher_logits, weights)
    assert expected > 0
    assert np.isclose(got, expected, rtol=1e-5)


def _two_class_case():
  """Four pixels, K_old = 3, K = 4. Student predicts 0, 0, 1, 3 (a new class); labels are
  0, 2, 1, 255. Class 0 and class 1 are present on both sides; class 2 only in the labels
  (left out)."""
  logits = np.zeros((1, 1, 4, 4), np.float32)
  logits[0, 0, 0] = [3.0, 0.0, 0.0, 0.0]
  logits[0, 0, 1] = [1.0, 0.0, 0.5, 0.0]
  logits[0, 0, 2] = [0.0, 2.0, 0.0, 1.0]
  logits[0, 0, 3] = [0.0, 0.0, 0.0, 4.0]
  teacher_logits = np.zeros((1, 1, 4, 3), np.float32)
  teacher_logits[0, 0, 0] = [2.0, 0.0, 0.0]
  teacher_logits[0, 0, 1] = [0.0, 0.0, 1.0]
  teacher_logits[0, 0, 2] = [0.0, 5.0, 0.0]
  teacher_logits[0, 0, 3] = [0.0, 0.0, 0.0]
  labels = np.array([[[0, 2, 1, 255]]])
  return logits, labels, teacher_logits


def test_class_relation_loss_leaves_out_one_sided_classes_and_scales_by_weights():
  """Hand computation: class 2 (labelled, never predicted) is left out; the sum is over
  classes 0 and 1 divided by 2; changing w_2 changes nothing, doubling w_1 doubles its term."""
  logits, labels, teacher_logits = _two_class_case()
  p, q = _softmax(logits[0, 0]), _softmax(teacher_logits[0, 0])
  a0, b0 = (p[0].max() + p[1].max()) / 2, q[0].max()
  a1, b1 = p[2].max(), q[2].max()
  weights = np.array([1.0, 1.0, 7.0], np.float32)
  got = float(losses.class_relation_loss(logits, labels, teacher_logits, weights))
  assert np.isclose(got, (abs(a0 - b0) + abs(a1 - b1)) / 2, rtol=1e-5)
  weights = np.array([1.0, 2.0, 100.0], np.float32)
  got = float(losses.class_relation_loss(logits, labels, teacher_logits, weights))
  assert np.isclose(got, (abs(a0 - b0) + 2 * abs(a1 - b1)) / 2, rtol=1e-5)
  assert np.isclose(got, _relation_reference(logits, labels, teacher_logits, weights),
                    rtol=1e-5)


def test_class_relation_loss_all_absent_is_zero_without_nan():
  """No old class on both sides (the student predicts only the new class, labels are new or
  void): loss 0, gradient 0, no NaN."""
  logits = np.zeros((1, 2, 2, 4), np.float32)
  logits[..., 3] = 5.0
  teacher_logits = np.random.default_rng(12).normal(size=(1, 2, 2, 3)).astype(np.float32)
  labels = np.array([[[3, 255], [3, 0]]])  # class 0 labelled but never predicted
  loss, gradient = jax.value_and_grad(losses.class_relation_loss)(
      jnp.asarray(logits), labels, teacher_logits, jnp.ones(3))
  assert float(loss) == 0.0
  assert np.all(np.isfinite(np.asarray(gradient)))
  assert np.all(np.asarray(gradient) == 0.0)


def test_class_relation_loss_gradients_are_finite_and_nonzero():
  """The gradient with respect to the student logits is finite, and non-zero where the
  student's confidence enters a present class."""
  rng = np.random.default_rng(13)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 5)).astype(np.float32))
  teacher_logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 4, 4))
  gradient = np.asarray(jax.grad(losses.class_relation_loss)(
      logits, labels, teacher_logits, jnp.ones(3)))
  assert np.all(np.isfinite(gradient))
  assert np.abs(gradient).sum() > 0
  # Confidence is a max over channels: finite differences along a random direction agree.
  direction = rng.normal(size=logits.shape).astype(np.float32)
  epsilon = 1e-3
  # The student's argmax is the same at both ends of the difference (its best logit leads
  # by >= 0.015 everywhere): the loss is smooth between them, no pixel changes class.
  np.testing.assert_array_equal(np.argmax(logits + epsilon * direction, axis=-1),
                                np.argmax(logits - epsilon * direction, axis=-1))
  plus = losses.class_relation_loss(logits + epsilon * direction, labels, teacher_logits,
                                    jnp.ones(3))
  minus = losses.class_relation_loss(logits - epsilon * direction, labels, teacher_logits,
                                     jnp.ones(3))
  numeric = (float(plus) - float(minus)) / (2 * epsilon)
  assert np.isclose(numeric, float(np.sum(gradient * direction)), rtol=2e-2, atol=1e-4)


# --- temperature distillation -------------------------------------------------------------------

def test_temperature_distillation_is_unkd_at_both_temperatures():
  """unkd(z / T_soft, z_old / T_soft) + unkd(z / T_sharp, z_old / T_sharp), both from the
  NumPy reference of MiB's unbiased distillation and from the library's unkd."""
  rng = np.random.default_rng(14)
  logits = rng.normal(size=(2, 3, 3, 5)).astype(np.float32) * 2
  teacher_logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32) * 2
  soft, sharp = 2.0, 0.5
  got = float(losses.temperature_distillation(logits, teacher_logits, soft, sharp))
  expected = (_unkd_reference(logits / soft, teacher_logits / soft)
              + _unkd_reference(logits / sharp, teacher_logits / sharp))
  assert np.isclose(got, expected, rtol=1e-5)
  library = (losses.unbiased_distillation(logits / soft, teacher_logits / soft)
             + losses.unbiased_distillation(logits / sharp, teacher_logits / sharp))
  assert np.isclose(got, float(library), rtol=1e-6)
  # The temperatures matter: T = 1 for both is a different value.
  assert not np.isclose(got, 2 * _unkd_reference(logits, teacher_logits), rtol=1e-3)

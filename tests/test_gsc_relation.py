"""GSC's second-reconstruction relation terms (docs/algorithm.md 5.2): RDP's soft labels over
all pixels, GLFC / HFC's binary cross-entropy to the same target, FISS's class-relation term
over all K classes and its per-class mean weights, against plain-loop float64 NumPy
transcriptions of the formulas (written from docs/algorithm.md 5.2, not from the library).

Tolerance: the library computes in float32, the references in float64. Each float32
exp / log / sigmoid is within a few ulps (~1e-7 relative) and the sums run over at most
18 channels and a few hundred pixels, so the accumulated relative error stays below ~1e-6;
rtol 1e-5 leaves a margin and still pins every formula (a wrong factor or a wrong pixel
set changes the values by far more). The relation loss takes absolute differences of
means, whose small values get an atol of 1e-7 on top.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsc_jax import losses

RTOL, ATOL = 1e-5, 1e-7

# (K_old, K): step 1 of 15-1 (K_old = 16), step 2 of 15-1 (17, 18), step 1 of 10-5 (11, 16).
SHAPES = [(16, 17), (17, 18), (11, 16)]


# --- NumPy references (float64, loops) ----------------------------------------------------------

def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  peak = z.max()
  return z - peak - np.log(np.exp(z - peak).sum())


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _log_sigmoid(z):
  """log(1 / (1 + e^-z)) = -log(1 + e^-z), via logaddexp so that large |z| stays exact."""
  return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def _soft_target(label, teacher_logit, num_classes):
  """v: sigmoid of the teacher on the old channels, one-hot of the label on the new ones."""
  num_old = len(teacher_logit)
  v = np.zeros(num_classes)
  v[:num_old] = _sigmoid(teacher_logit)
  if label != 255 and label >= num_old:
    v[label] = 1.0
  return v


def _soft_label_reference(logits, labels, teacher_logits):
  num_classes = logits.shape[-1]
  total = 0.0
  for index in np.ndindex(labels.shape):  # every pixel, void included
    s = _softmax(_soft_target(labels[index], teacher_logits[index], num_classes))
    total += -np.sum(s * _log_softmax(logits[index])) / num_classes
  return total / labels.size


def _bce_reference(logits, labels, teacher_logits):
  num_classes = logits.shape[-1]
  total = 0.0
  for index in np.ndindex(labels.shape):
    v = _soft_target(labels[index], teacher_logits[index], num_classes)
    z = np.asarray(logits[index], np.float64)
    total += -np.sum(v * _log_sigmoid(z) + (1 - v) * _log_sigmoid(-z)) / num_classes
  return total / labels.size


def _mean_weight_reference(labels, pixel_weights, num_classes):
  out = np.zeros(num_classes)
  for c in range(num_classes):
    members = labels == c
    if members.any():
      out[c] = np.asarray(pixel_weights, np.float64)[members].mean()
  return out


def _relation_reference(logits, labels, teacher_logits, class_weights):
  num_classes = logits.shape[-1]
  # The argmax of the same float32 logits as the library's: no arithmetic, no near-tie issue.
  predicted = np.argmax(logits, axis=-1)
  student_confidence = np.zeros(labels.shape)
  teacher_confidence = np.zeros(labels.shape)
  for index in np.ndindex(labels.shape):
    student_confidence[index] = _softmax(logits[index]).max()
    teacher_confidence[index] = _softmax(teacher_logits[index]).max()
  total = 0.0
  for c in range(num_classes):
    a = student_confidence[predicted == c].mean() if (predicted == c).any() else 0.0
    b = teacher_confidence[labels == c].mean() if (labels == c).any() else 0.0
    w = float(class_weights[c])
    total += abs(w * a - w * b)
  return total / num_classes


def _inputs(num_old, num_classes, seed, shape=(2, 5, 6), void_fraction=0.15):
  """Student logits [B, H, W, K], teacher logits [B, H, W, K_old], targets with background,
  old (pseudo-labelled), new and void pixels."""
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=shape + (num_classes,)) * 2).astype(np.float32)
  teacher_logits = (rng.normal(size=shape + (num_old,)) * 2).astype(np.float32)
  labels = rng.integers(0, num_classes, size=shape)
  labels[rng.random(shape) < 0.3] = 0
  labels[rng.random(shape) < 0.3] = rng.integers(num_old, num_classes)
  labels[rng.random(shape) < void_fraction] = 255
  return logits, labels.astype(np.int32), teacher_logits


# --- soft labels (RDP) ---------------------------------------------------------------------------

def test_soft_label_targets_by_hand():
  """K_old = 2, K = 4: an old label, a new label, background and void."""
  teacher_logits = np.zeros((1, 1, 4, 2), np.float32)
  teacher_logits[0, 0, :, 1] = 2.0
  labels = np.array([[[1, 3, 0, 255]]], np.int32)
  got = np.asarray(losses.soft_label_targets(labels, teacher_logits, 4))
  old = [0.5, _sigmoid(2.0)]
  expected = np.array([old + [0, 0], old + [0, 1], old + [0, 0], old + [0, 0]])
  np.testing.assert_allclose(got[0, 0], expected, rtol=RTOL)


@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_soft_label_loss_all_pixels_matches_reference(num_old, num_classes):
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=num_classes)
  assert (labels == 255).any() and (labels >= num_old).any() and (labels == 0).any()
  got = float(losses.soft_label_loss_all_pixels(logits, labels, teacher_logits))
  assert np.isclose(got, _soft_label_reference(logits, labels, teacher_logits), rtol=RTOL)


def test_soft_label_loss_all_pixels_counts_void_unlike_the_first_reconstruction():
  """Without void pixels the two soft-label losses are the same number; with void pixels
  the new one is larger (a void pixel adds its teacher-only term instead of 0)."""
  logits, labels, teacher_logits = _inputs(17, 18, seed=1, void_fraction=0.0)
  assert not (labels == 255).any()
  first = float(losses.soft_label_loss(logits, labels, teacher_logits))
  second = float(losses.soft_label_loss_all_pixels(logits, labels, teacher_logits))
  assert np.isclose(first, second, rtol=RTOL)
  labels[0, :2] = 255
  first = float(losses.soft_label_loss(logits, labels, teacher_logits))
  second = float(losses.soft_label_loss_all_pixels(logits, labels, teacher_logits))
  assert second > first
  assert np.isclose(second, _soft_label_reference(logits, labels, teacher_logits), rtol=RTOL)


def _expected_logit_gradient(logits, labels, teacher_logits, num_classes, predicted, target):
  """Per pixel (predicted(z_i) - target(v_i)) / (K * B*H*W), v_i the soft target of pixel i:
  the gradient of a soft-label loss averaged over classes and every pixel."""
  expected = np.zeros(logits.shape)
  for index in np.ndindex(labels.shape):
    soft_target = _soft_target(labels[index], teacher_logits[index], num_classes)
    expected[index] = ((predicted(logits[index]) - target(soft_target))
                       / (num_classes * labels.size))
  return expected


@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_soft_label_loss_all_pixels_gradient_is_p_minus_s(num_old, num_classes):
  """d loss / d z_i = (softmax(z_i) - softmax(v_i)) / (K * B*H*W), since sum_c s_ic = 1."""
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=2)
  gradient = np.asarray(jax.grad(losses.soft_label_loss_all_pixels)(
      jnp.asarray(logits), labels, teacher_logits))
  expected = _expected_logit_gradient(logits, labels, teacher_logits, num_classes,
                                      predicted=_softmax, target=_softmax)
  assert np.all(np.isfinite(gradient))
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-9)


# --- binary cross-entropy to the soft target (GLFC / HFC) --------------------------------------

@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_soft_label_binary_cross_entropy_matches_reference(num_old, num_classes):
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=10 + num_classes)
  got = float(losses.soft_label_binary_cross_entropy(logits, labels, teacher_logits))
  assert np.isclose(got, _bce_reference(logits, labels, teacher_logits), rtol=RTOL)


def test_soft_label_binary_cross_entropy_by_hand_one_pixel():
  """K_old = 1, K = 2, label 1, teacher logit 0: v = [0.5, 1]; z = [1, -1]."""
  logits = np.array([[[[1.0, -1.0]]]], np.float32)
  labels = np.array([[[1]]], np.int32)
  teacher_logits = np.zeros((1, 1, 1, 1), np.float32)
  p = 1 / (1 + np.exp(-np.array([1.0, -1.0])))
  v = np.array([0.5, 1.0])
  expected = -np.mean(v * np.log(p) + (1 - v) * np.log(1 - p))
  got = float(losses.soft_label_binary_cross_entropy(logits, labels, teacher_logits))
  assert np.isclose(got, expected, rtol=RTOL)


def test_soft_label_binary_cross_entropy_is_stable_for_large_logits():
  """|z| = 200: sigmoid(z) is 1 or 0 in float32, yet the loss (written with log_sigmoid)
  stays finite and exact, and so does its gradient (sigmoid(z) - v) / (K * B*H*W)."""
  logits = np.array([[[[200.0, -200.0, 200.0], [-200.0, 200.0, -200.0]]]], np.float32)
  labels = np.array([[[2, 0]]], np.int32)
  teacher_logits = np.array([[[[-200.0, 200.0], [3.0, -3.0]]]], np.float32)
  got = float(losses.soft_label_binary_cross_entropy(logits, labels, teacher_logits))
  assert np.isfinite(got)
  assert np.isclose(got, _bce_reference(logits, labels, teacher_logits), rtol=RTOL)
  gradient = np.asarray(jax.grad(losses.soft_label_binary_cross_entropy)(
      jnp.asarray(logits), labels, teacher_logits))
  expected = _expected_logit_gradient(logits, labels, teacher_logits, 3,
                                      predicted=_sigmoid, target=lambda v: v)
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_soft_label_binary_cross_entropy_gradient(num_old, num_classes):
  """d loss / d z_ic = (sigmoid(z_ic) - v_ic) / (K * B*H*W)."""
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=3)
  gradient = np.asarray(jax.grad(losses.soft_label_binary_cross_entropy)(
      jnp.asarray(logits), labels, teacher_logits))
  expected = _expected_logit_gradient(logits, labels, teacher_logits, num_classes,
                                      predicted=_sigmoid, target=lambda v: v)
  assert np.all(np.isfinite(gradient))
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-9)


# --- per-class mean weights and the class relation (FISS) --------------------------------------

@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_mean_weight_per_class_matches_reference(num_old, num_classes):
  """0 for a class without pixels (class 3 here), the mean weight otherwise; void ignored."""
  rng = np.random.default_rng(4)
  _, labels, _ = _inputs(num_old, num_classes, seed=4)
  labels[labels == 3] = 0
  weights = rng.uniform(0.2, 3.0, size=labels.shape).astype(np.float32)
  got = np.asarray(losses.mean_weight_per_class(labels, weights, num_classes))
  expected = _mean_weight_reference(labels, weights, num_classes)
  assert got.shape == (num_classes,)
  assert got[3] == 0.0
  np.testing.assert_allclose(got, expected, rtol=RTOL)
  ones = np.asarray(losses.mean_weight_per_class(labels, np.ones_like(weights), num_classes))
  np.testing.assert_array_equal(ones, [float((labels == c).any()) for c in range(num_classes)])


@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_class_relation_loss_all_classes_matches_reference(num_old, num_classes):
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=20 + num_classes)
  rng = np.random.default_rng(5)
  pixel_weights = rng.uniform(0.2, 3.0, size=labels.shape).astype(np.float32)
  class_weights = losses.mean_weight_per_class(labels, pixel_weights, num_classes)
  got = float(losses.class_relation_loss_all_classes(logits, labels, teacher_logits,
                                                     class_weights))
  expected = _relation_reference(logits, labels, teacher_logits, np.asarray(class_weights))
  assert expected > 0
  assert np.isclose(got, expected, rtol=RTOL, atol=ATOL)


def test_class_relation_loss_all_classes_by_hand():
  """K_old = 2, K = 3, four pixels. Student predicts 0, 0, 1, 2; targets are 0, 1, 1, 255.
  Class 2 is predicted but never targeted: wbar_2 = 0, no term. Every class's term is
  |wbar a - wbar b|, and the sum is divided by K = 3 (not by the classes present)."""
  logits = np.array([[[[3.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.0, 2.0, 1.0],
                       [0.0, 0.0, 4.0]]]], np.float32)
  teacher_logits = np.array([[[[2.0, 0.0], [0.0, 1.0], [0.0, 5.0], [1.0, 1.0]]]], np.float32)
  labels = np.array([[[0, 1, 1, 255]]], np.int32)
  p = [_softmax(z).max() for z in logits[0, 0]]
  q = [_softmax(z).max() for z in teacher_logits[0, 0]]
  a0, a1 = (p[0] + p[1]) / 2, p[2]
  b0, b1 = q[0], (q[1] + q[2]) / 2
  weights = np.array([2.0, 0.5, 0.0], np.float32)
  got = float(losses.class_relation_loss_all_classes(logits, labels, teacher_logits, weights))
  assert np.isclose(got, (2.0 * abs(a0 - b0) + 0.5 * abs(a1 - b1)) / 3, rtol=RTOL)
  # A class targeted but never predicted keeps its teacher side: |0 - wbar b|.
  labels = np.array([[[0, 1, 1, 0]]], np.int32)
  logits[0, 0, 2] = [0.0, 0.0, 3.0]  # nobody predicts class 1 any more
  weights = np.array([1.0, 1.5, 0.0], np.float32)
  p = [_softmax(z).max() for z in logits[0, 0]]
  a0 = (p[0] + p[1]) / 2
  b0, b1 = (q[0] + q[3]) / 2, (q[1] + q[2]) / 2
  got = float(losses.class_relation_loss_all_classes(logits, labels, teacher_logits, weights))
  assert np.isclose(got, (abs(a0 - b0) + 1.5 * b1) / 3, rtol=RTOL)


@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_class_relation_loss_all_classes_gradient(num_old, num_classes):
  """Finite, non-zero, and equal to central finite differences along a random direction
  (the student's argmax is the same at both ends, so the loss is smooth in between); the
  class weights get no gradient (held constant)."""
  logits, labels, teacher_logits = _inputs(num_old, num_classes, seed=6)
  logits = jnp.asarray(logits)
  class_weights = losses.mean_weight_per_class(
      labels, np.random.default_rng(7).uniform(0.5, 2.0, size=labels.shape), num_classes)
  loss_of = lambda z: losses.class_relation_loss_all_classes(z, labels, teacher_logits,
                                                             class_weights)
  gradient = np.asarray(jax.grad(loss_of)(logits))
  assert np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0
  direction = np.random.default_rng(8).normal(size=logits.shape).astype(np.float32)
  epsilon = 1e-3
  np.testing.assert_array_equal(np.argmax(logits + epsilon * direction, axis=-1),
                                np.argmax(logits - epsilon * direction, axis=-1))
  numeric = (float(loss_of(logits + epsilon * direction))
             - float(loss_of(logits - epsilon * direction))) / (2 * epsilon)
  # float32 loss values differenced over 2e-3: about 1e-7 / 2e-3 absolute noise.
  assert np.isclose(numeric, float(np.sum(gradient * direction)), rtol=2e-2, atol=1e-4)
  weight_gradient = jax.grad(
      lambda w: losses.class_relation_loss_all_classes(logits, labels, teacher_logits, w))(
          class_weights)
  np.testing.assert_array_equal(np.asarray(weight_gradient), 0.0)


# --- a batch of void pixels only ----------------------------------------------------------------

@pytest.mark.parametrize("num_old,num_classes", SHAPES)
def test_void_only_batch_is_finite(num_old, num_classes):
  """Every target 255: the soft-label losses keep their teacher-only terms (finite, as the
  references); no class is targeted, so every wbar_c and b_c is 0 and the relation loss is 0;
  all gradients finite."""
  logits, _, teacher_logits = _inputs(num_old, num_classes, seed=9)
  labels = np.full(logits.shape[:3], 255, np.int32)
  logits = jnp.asarray(logits)
  soft = float(losses.soft_label_loss_all_pixels(logits, labels, teacher_logits))
  assert np.isclose(soft, _soft_label_reference(np.asarray(logits), labels, teacher_logits),
                    rtol=RTOL)
  bce = float(losses.soft_label_binary_cross_entropy(logits, labels, teacher_logits))
  assert np.isclose(bce, _bce_reference(np.asarray(logits), labels, teacher_logits), rtol=RTOL)
  class_weights = losses.mean_weight_per_class(labels, jnp.ones(labels.shape), num_classes)
  np.testing.assert_array_equal(np.asarray(class_weights), 0.0)
  relation = float(losses.class_relation_loss_all_classes(logits, labels, teacher_logits,
                                                          class_weights))
  assert relation == 0.0
  # Even with weights of 1 (a caller not using mean_weight_per_class) only a_c remains.
  ones = jnp.ones(num_classes)
  relation = float(losses.class_relation_loss_all_classes(logits, labels, teacher_logits, ones))
  assert np.isclose(relation, _relation_reference(np.asarray(logits), labels, teacher_logits,
                                                  np.ones(num_classes)), rtol=RTOL)
  for loss in (losses.soft_label_loss_all_pixels, losses.soft_label_binary_cross_entropy,
               lambda z, y, t: losses.class_relation_loss_all_classes(z, y, t, class_weights),
               lambda z, y, t: losses.class_relation_loss_all_classes(z, y, t, ones),
               lambda z, y, t: losses.sharpening_loss(z)):
    gradient = np.asarray(jax.grad(loss)(logits, labels, teacher_logits))
    assert np.all(np.isfinite(gradient))

"""GSC's second-reconstruction prototypical re-labelling (docs/algorithm.md 5.3): the
teacher's prototypes at the start of a step, the corrected scores s (plain Euclidean or
cosine similarity, bilinear resize of kappa) and the two decisions (filter_then_relabel,
rdp), against plain-loop float64 NumPy transcriptions written from docs/algorithm.md 5.3.

Tolerance: float32 (library) against float64 (references). Softmaxes over <= 17 channels,
a bilinear blend of 4 values and a renormalisation are each within a few ulps (~1e-7
relative); rtol 1e-5 leaves a margin while still pinning the formulas. Tiny scores (a
kappa of e^-20) get atol 1e-7 on top. Feature sums over a few dozen pixels of unit-size
features have a float32 rounding of ~1e-6 absolute, hence atol 1e-5 there.

Decisions are only asserted where the scores lead by a clear margin: the decision tests
build s directly, the end-to-end test builds features and teacher logits whose s leads by
far more than any rounding.
"""

import numpy as np
import pytest

from gsc_jax import errors
from gsc_jax import pseudo_labels
from tests.test_pseudo_labels import _nearest_reference as _nearest

RTOL, ATOL = 1e-5, 1e-7


# --- NumPy references (float64, loops) ----------------------------------------------------------

def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def _teacher_sums_reference(features, teacher_logits, labels):
  batch, height, width, num_old = teacher_logits.shape
  small = _nearest(labels, height, width)
  sums = np.zeros((num_old, features.shape[-1]))
  counts = np.zeros(num_old)
  for index in np.ndindex(small.shape):
    label = small[index]
    if label == 0:
      label = int(np.argmax(teacher_logits[index]))  # same float32 values: exact argmax
    if label == 255 or label >= num_old:
      continue
    sums[label] += features[index]
    counts[label] += 1
  return sums, counts


def _similarity(f, eta, similarity):
  f, eta = np.asarray(f, np.float64), np.asarray(eta, np.float64)
  if similarity == "cosine":
    return f @ eta / ((np.linalg.norm(f) + 1e-8) * (np.linalg.norm(eta) + 1e-8))
  if similarity == "euclidean":
    return -np.sqrt(np.sum((f - eta) ** 2))
  return -np.sum((f - eta) ** 2)


def _kappa_reference(features, prototypes, seen, temperature, similarity):
  """kappa [B, h, w, K_old] at feature resolution: softmax over the seen classes, 0 for the
  others (uniform when none is seen)."""
  num_old = len(seen)
  kappa = np.zeros(features.shape[:3] + (num_old,))
  for index in np.ndindex(features.shape[:3]):
    if not np.any(seen):
      kappa[index] = 1.0 / num_old
      continue
    scores = np.array([_similarity(features[index], prototypes[c], similarity) / temperature
                       if seen[c] else -np.inf for c in range(num_old)])
    e = np.exp(scores - scores[np.asarray(seen)].max())
    kappa[index] = e / e.sum()
  return kappa


def _linear_taps(size_in, size_out):
  """Per output index: (i0, i1, fraction) of linear interpolation with half-pixel centres,
  the position clamped to [0, size_in - 1] (an out-of-range neighbour has no weight)."""
  taps = []
  for o in range(size_out):
    x = min(max((o + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
    i0 = int(np.floor(x))
    taps.append((i0, min(i0 + 1, size_in - 1), x - i0))
  return taps


def _bilinear(values, height, width):
  """[B, h, w, K] -> [B, height, width, K], separable linear interpolation, plain loops."""
  batch, small_h, small_w, channels = values.shape
  out = np.zeros((batch, height, width, channels))
  for i, (r0, r1, fr) in enumerate(_linear_taps(small_h, height)):
    for j, (c0, c1, fc) in enumerate(_linear_taps(small_w, width)):
      out[:, i, j] = ((1 - fr) * ((1 - fc) * values[:, r0, c0] + fc * values[:, r0, c1])
                      + fr * ((1 - fc) * values[:, r1, c0] + fc * values[:, r1, c1]))
  return out


def _scores_reference(teacher_logits, features, prototypes, seen, temperature, similarity):
  batch, height, width, _ = teacher_logits.shape
  kappa = _bilinear(_kappa_reference(features, prototypes, seen, temperature, similarity),
                    height, width)
  scores = np.zeros(teacher_logits.shape)
  for index in np.ndindex((batch, height, width)):
    combined = kappa[index] * _softmax(teacher_logits[index])
    scores[index] = combined / combined.sum()
  return scores


def _filter_then_relabel_reference(labels, scores, accepted):
  targets = np.array(labels, copy=True)
  nu = np.zeros(labels.shape[0])
  for b in range(labels.shape[0]):
    background = kept = 0
    for index in np.ndindex(labels.shape[1:]):
      if labels[b][index] != 0:
        continue
      background += 1
      if accepted[b][index]:
        kept += 1
        targets[b][index] = int(np.argmax(scores[b][index]))
      else:
        targets[b][index] = 255
    nu[b] = kept / (background + 1e-6)
  return targets, nu


def _rdp_reference(labels, scores):
  targets = np.array(labels, copy=True)
  for index in np.ndindex(labels.shape):
    if labels[index] == 0:
      targets[index] = int(np.argmax(scores[index]))
  return targets


def _clear_scores(rng, shape, num_old, margin=0.5):
  """Scores whose argmax (the returned winners) leads every other class by >= margin."""
  winners = rng.integers(0, num_old, size=shape)
  scores = rng.uniform(0.0, 1.0 - margin, size=shape + (num_old,))
  scores += np.eye(num_old)[winners] * (margin + 1.0)
  return (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32), winners


# --- prototypes from the teacher -------------------------------------------------------------

@pytest.mark.parametrize("num_old,num_classes,big,small",
                         [(17, 18, (9, 11), (3, 4)), (16, 17, (6, 6), (6, 6)),
                          (11, 16, (8, 10), (4, 5))])
def test_teacher_prototype_sums_match_reference(num_old, num_classes, big, small):
  """Labels resized by nearest; background pixels counted for the teacher's argmax, old
  labels for themselves, new classes and void nowhere. Old class 5 is never the teacher's
  argmax and never a label: count 0, so unseen."""
  rng = np.random.default_rng(num_old + big[0])
  features = rng.normal(size=(2,) + small + (8,)).astype(np.float32)
  teacher_logits = (rng.normal(size=(2,) + small + (num_old,)) * 2).astype(np.float32)
  teacher_logits[..., 5] = -20.0
  labels = rng.choice([0, 0, 0, 1, 3, num_old, num_classes - 1, 255], size=(2,) + big)
  sums, counts = pseudo_labels.teacher_prototype_sums(features, teacher_logits, labels)
  expected_sums, expected_counts = _teacher_sums_reference(features, teacher_logits, labels)
  assert np.asarray(sums).shape == (num_old, 8) and np.asarray(counts).shape == (num_old,)
  np.testing.assert_array_equal(np.asarray(counts), expected_counts)
  np.testing.assert_allclose(np.asarray(sums), expected_sums, rtol=RTOL, atol=1e-5)
  small_labels = _nearest(labels, *small)
  assert expected_counts.sum() == np.sum(small_labels < num_old)  # new and void left out
  assert expected_counts[5] == 0
  prototypes, seen = pseudo_labels.updated_prototypes(None, None, np.asarray(sums),
                                                      np.asarray(counts))
  np.testing.assert_array_equal(seen, expected_counts > 0)
  assert not seen[5] and seen.sum() > 3
  np.testing.assert_allclose(prototypes[seen], expected_sums[seen]
                             / expected_counts[seen, None], rtol=RTOL, atol=1e-6)


def test_teacher_prototype_sums_void_only_batch():
  """Every label 255: all counts and sums 0, finite; every class unseen."""
  features = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
  teacher_logits = np.random.default_rng(1).normal(size=(2, 3, 3, 17)).astype(np.float32)
  labels = np.full((2, 6, 6), 255)
  sums, counts = pseudo_labels.teacher_prototype_sums(features, teacher_logits, labels)
  np.testing.assert_array_equal(np.asarray(counts), 0.0)
  np.testing.assert_array_equal(np.asarray(sums), 0.0)
  _, seen = pseudo_labels.updated_prototypes(None, None, np.asarray(sums), np.asarray(counts))
  assert not seen.any()


def test_teacher_prototype_sums_shape_mismatch():
  with pytest.raises(errors.InputError, match="spatial"):
    pseudo_labels.teacher_prototype_sums(np.zeros((1, 3, 3, 4)), np.zeros((1, 6, 6, 3)),
                                         np.zeros((1, 6, 6), int))


# --- corrected scores ---------------------------------------------------------------------------

@pytest.mark.parametrize("similarity,temperature", [("euclidean", 1.0), ("euclidean", 0.5),
                                                    ("cosine", 0.1),
                                                    ("squared_euclidean", 4.0)])
@pytest.mark.parametrize("small,big", [((4, 5), (4, 5)), ((3, 4), (6, 8)), ((3, 4), (5, 7))])
def test_prototype_scores_match_reference(similarity, temperature, small, big):
  """K_old = 17 (step 2 of 15-1); class 4 unseen: its kappa and s are exactly 0, no NaN.
  Features at feature resolution, teacher logits at label resolution (equal, double and a
  non-integer ratio)."""
  num_old = 17
  rng = np.random.default_rng(big[0] * 10 + small[1])
  features = rng.normal(size=(2,) + small + (6,)).astype(np.float32)
  prototypes = rng.normal(size=(num_old, 6)).astype(np.float32)
  seen = np.ones(num_old, bool)
  seen[4] = False
  prototypes[4] = 0.0  # an unseen class's stored prototype (zeros, from updated_prototypes)
  teacher_logits = (rng.normal(size=(2,) + big + (num_old,)) * 2).astype(np.float32)
  got = np.asarray(pseudo_labels.prototype_scores(teacher_logits, features, prototypes, seen,
                                                  temperature, similarity))
  expected = _scores_reference(teacher_logits, features, prototypes, seen, temperature,
                               similarity)
  assert got.shape == teacher_logits.shape
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got[..., 4], 0.0)
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=RTOL)


def test_prototype_scores_no_seen_class_gives_teacher_softmax():
  """No prototype at all (e.g. a void-only pass): kappa uniform, s = q; finite."""
  rng = np.random.default_rng(3)
  teacher_logits = rng.normal(size=(1, 4, 4, 17)).astype(np.float32)
  features = rng.normal(size=(1, 2, 2, 5)).astype(np.float32)
  got = np.asarray(pseudo_labels.prototype_scores(
      teacher_logits, features, np.zeros((17, 5), np.float32), np.zeros(17, bool), 1.0,
      "euclidean"))
  q = np.stack([_softmax(z) for z in teacher_logits.reshape(-1, 17)]).reshape(got.shape)
  np.testing.assert_allclose(got, q, rtol=RTOL, atol=ATOL)


def test_prototype_relabel_is_a_threshold_on_prototype_scores():
  """The first reconstruction's decisions, read off prototype_scores (refactoring check):
  argmax 0 keeps 0, argmax c >= 1 with s_c >= theta becomes c, otherwise 255. Scores with
  clear margins: features near one prototype each, mild teacher logits."""
  rng = np.random.default_rng(4)
  num_old = 5
  prototypes = np.eye(num_old, 6, dtype=np.float32) * 3
  chosen = rng.integers(0, num_old, size=(2, 4, 4))
  features = (prototypes[chosen] + rng.normal(scale=0.05, size=(2, 4, 4, 6))).astype(
      np.float32)
  teacher_logits = rng.normal(scale=0.3, size=(2, 4, 4, num_old)).astype(np.float32)
  labels = rng.choice([0, 0, 0, 6, 255], size=(2, 4, 4))
  seen = np.ones(num_old, bool)
  scores = _scores_reference(teacher_logits, features, prototypes, seen, 0.1, "cosine")
  top_two = np.sort(scores, axis=-1)[..., -2:]
  assert (top_two[..., 1] - top_two[..., 0]).min() > 0.5
  theta = 0.9
  assert np.abs(scores.max(axis=-1) - theta).min() > 1e-3  # no score at the threshold
  best = np.argmax(scores, axis=-1)
  decided = np.where(best == 0, 0, np.where(scores.max(axis=-1) >= theta, best, 255))
  expected = np.where(labels == 0, decided, labels)
  new, accepted = pseudo_labels.prototype_relabel(labels, teacher_logits, features, prototypes,
                                                  seen, 0.1, theta, "cosine")
  np.testing.assert_array_equal(np.asarray(new), expected)
  np.testing.assert_array_equal(np.asarray(accepted), (labels == 0) & (expected != 255))


# --- decisions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_old,num_classes", [(17, 18), (16, 17), (11, 16)])
def test_filter_then_relabel_matches_reference(num_old, num_classes):
  """Background pixels rejected by the filter -> 255, accepted ones -> argmax s (0
  included); new-class and void pixels unchanged even where ``accepted`` is True; nu as
  PLOP's adaptive factor. Image 1 has no background pixel: nu = 0."""
  rng = np.random.default_rng(num_old)
  shape = (3, 5, 6)
  scores, winners = _clear_scores(rng, shape, num_old)
  winners[0, 0, :3] = 0  # background wins somewhere
  scores[0, 0, :3] = np.eye(num_old)[0] * 0.9 + 0.1 / num_old
  labels = rng.choice([0, 0, 0, num_old, num_classes - 1, 255], size=shape).astype(np.int32)
  labels[0, 0, :3] = 0
  labels[1] = rng.choice([num_old, 255], size=shape[1:])
  accepted = rng.random(shape) < 0.6
  accepted[0, 0, :3] = True
  targets, nu = pseudo_labels.filter_then_relabel(labels, scores, accepted)
  expected, expected_nu = _filter_then_relabel_reference(labels, scores, accepted)
  np.testing.assert_array_equal(np.asarray(targets), expected)
  np.testing.assert_allclose(np.asarray(nu), expected_nu, rtol=1e-6)
  assert np.asarray(nu)[1] == 0.0
  np.testing.assert_array_equal(np.asarray(targets)[0, 0, :3], 0)  # accepted, argmax 0
  background = labels == 0
  assert np.all(np.asarray(targets)[background & ~accepted] == 255)
  np.testing.assert_array_equal(np.asarray(targets)[background & accepted],
                                winners[background & accepted])
  np.testing.assert_array_equal(np.asarray(targets)[~background], labels[~background])


@pytest.mark.parametrize("num_old,num_classes", [(17, 18), (16, 17), (11, 16)])
def test_rdp_relabel_matches_reference(num_old, num_classes):
  """Every background pixel takes argmax s, none becomes 255 (other than void already);
  nu = 1 for every image."""
  rng = np.random.default_rng(100 + num_old)
  shape = (3, 4, 7)
  scores, winners = _clear_scores(rng, shape, num_old)
  labels = rng.choice([0, 0, 0, num_old, num_classes - 1, 255], size=shape).astype(np.int32)
  targets, nu = pseudo_labels.rdp_relabel(labels, scores)
  np.testing.assert_array_equal(np.asarray(targets), _rdp_reference(labels, scores))
  np.testing.assert_array_equal(np.asarray(targets)[labels == 0], winners[labels == 0])
  np.testing.assert_array_equal(np.asarray(targets) == 255, labels == 255)
  np.testing.assert_array_equal(np.asarray(nu), np.ones(3, np.float32))


def test_decisions_void_only_batch():
  """Every label 255: both decisions leave the labels as they are; nu 0 (no background,
  PLOP's factor) for filter_then_relabel, 1 for rdp."""
  rng = np.random.default_rng(5)
  scores, _ = _clear_scores(rng, (2, 3, 3), 17)
  labels = np.full((2, 3, 3), 255, np.int32)
  targets, nu = pseudo_labels.filter_then_relabel(labels, scores, np.ones((2, 3, 3), bool))
  np.testing.assert_array_equal(np.asarray(targets), labels)
  np.testing.assert_array_equal(np.asarray(nu), 0.0)
  targets, nu = pseudo_labels.rdp_relabel(labels, scores)
  np.testing.assert_array_equal(np.asarray(targets), labels)
  np.testing.assert_array_equal(np.asarray(nu), 1.0)


# --- end to end ---------------------------------------------------------------------------------

def test_prototypes_scores_and_decisions_end_to_end():
  """Step 2 of 15-1 (K_old = 17, K = 18). Teacher features at 4 x 4 are 10 e_c on a region
  the teacher predicts as c (old classes 0, 3, 7), so eta_c = 10 e_c and every other old
  class is unseen; the labels (8 x 8) mark background, new class 17 and void. Teacher logits
  are mild (0.5 on c), features agree with them: s leads by far; 'rdp' gives c on every
  background pixel, 'filter_then_relabel' the same where accepted and 255 elsewhere."""
  num_old, channels = 17, 20
  regions = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [7, 7, 7, 7], [7, 7, 0, 0]])
  features = (10.0 * np.eye(channels)[regions])[None].astype(np.float32)  # [1, 4, 4, 20]
  low_logits = (0.5 * np.eye(num_old)[regions])[None].astype(np.float32)
  labels = np.zeros((1, 8, 8), np.int32)
  labels[0, :2, 6:] = 17
  labels[0, 7, :2] = 255
  sums, counts = pseudo_labels.teacher_prototype_sums(features, low_logits, labels)
  prototypes, seen = pseudo_labels.updated_prototypes(None, None, np.asarray(sums),
                                                      np.asarray(counts))
  np.testing.assert_array_equal(np.flatnonzero(seen), [0, 3, 7])
  np.testing.assert_allclose(prototypes[3], 10.0 * np.eye(channels)[3], rtol=RTOL)
  # Teacher logits at label resolution: the low-resolution map repeated 2 x 2.
  logits = np.repeat(np.repeat(low_logits, 2, axis=1), 2, axis=2)
  scores = pseudo_labels.prototype_scores(logits, features, prototypes, seen, 1.0, "euclidean")
  scores = np.asarray(scores)
  assert np.all(np.isfinite(scores))
  np.testing.assert_array_equal(scores[..., ~seen], 0.0)
  expected_class = np.repeat(np.repeat(regions, 2, axis=0), 2, axis=1)[None]
  # Away from region borders kappa is one-hot up to e^-14 (distance sqrt(200) vs 0); at the
  # borders the bilinear blend still leaves the region's class ahead by a wide margin.
  top_two = np.sort(scores, axis=-1)[..., -2:]
  assert (top_two[..., 1] - top_two[..., 0]).min() > 0.1
  np.testing.assert_array_equal(np.argmax(scores, axis=-1), expected_class)
  targets, nu = pseudo_labels.rdp_relabel(labels, scores)
  np.testing.assert_array_equal(np.asarray(targets),
                                np.where(labels == 0, expected_class, labels))
  accepted = np.zeros((1, 8, 8), bool)
  accepted[0, ::2] = True
  targets, nu = pseudo_labels.filter_then_relabel(labels, scores, accepted)
  np.testing.assert_array_equal(
      np.asarray(targets),
      np.where(labels == 0, np.where(accepted, expected_class, 255), labels))
  background = labels == 0
  assert np.isclose(float(np.asarray(nu)[0]),
                    (background & accepted).sum() / (background.sum() + 1e-6), rtol=1e-6)

"""PLOP's entropy pseudo-labels and GSC's prototypes / prototypical re-labelling
(docs/algorithm.md 4 and 5.3), and the methods' training targets, against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from gsc_jax import methods
from gsc_jax import pseudo_labels
from gsc_jax import tasks
from gsc_jax.methods import base
from gsc_jax.methods import gsc


# --- NumPy references ------------------------------------------------------------------------

def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _entropy_reference(teacher_logits, num_classes):
  """PLOP's released entropy: -(1/log K_old) mean_c q log(q + 1e-8), then / log K."""
  q = _softmax(teacher_logits)
  num_old = q.shape[-1]
  return -np.mean(q * np.log(q + 1e-8), axis=-1) / np.log(num_old) / np.log(num_classes)


def _find_median_reference(histograms, floor, portion=0.5):
  """PLOP's released find_median (FISS's with ``portion``), transcribed line by line, with
  PyTorch's float32 arithmetic written out as np.float32."""
  nb_bins = histograms.shape[1]
  out = []
  for hist in histograms:
    total = hist.sum()
    if total <= 0:
      out.append(max(0.0, floor))
      continue
    half = np.float32(total) * np.float32(portion)
    running_sum = 0.
    for lower_border in range(nb_bins):
      lower_border = lower_border / nb_bins
      bin_index = int(lower_border * nb_bins)
      if (half >= np.float32(running_sum)
          and half <= np.float32(running_sum) + np.float32(hist[bin_index])):
        break
      running_sum += lower_border * nb_bins
    with np.errstate(divide="ignore", invalid="ignore"):  # PLOP divides by 0 too
      median = np.float32(lower_border) + ((half - np.float32(running_sum))
                                           / np.float32(hist[bin_index])) * np.float32(1 / nb_bins)
    out.append(max(median, floor))  # Python's max: NaN stays, -inf -> floor
  return np.array(out, np.float32)


def _nearest_reference(labels, height, width):
  big_h, big_w = labels.shape[1:]
  out = np.zeros((labels.shape[0], height, width), labels.dtype)
  for i in range(height):
    for j in range(width):
      out[:, i, j] = labels[:, int((i + 0.5) * big_h / height), int((j + 0.5) * big_w / width)]
  return out


def _relabel_reference(labels, teacher_logits, features, prototypes, seen, tau, theta,
                       similarity="cosine"):
  """GSC re-labelling pixel by pixel, features at label resolution (no resize)."""
  num_old = teacher_logits.shape[-1]
  out = np.array(labels, copy=True)
  for index in np.ndindex(labels.shape):
    if labels[index] != 0:
      continue
    f = np.asarray(features[index], np.float64)
    sims = np.full(num_old, -np.inf)
    for c in range(num_old):
      if not seen[c]:
        continue
      p = np.asarray(prototypes[c], np.float64)
      if similarity == "cosine":
        sims[c] = f @ p / (np.linalg.norm(f) * np.linalg.norm(p))
      elif similarity == "euclidean":
        sims[c] = -np.sqrt(np.sum((f - p) ** 2))
      else:
        sims[c] = -np.sum((f - p) ** 2)
    kappa = np.exp((sims - sims.max()) / tau)
    kappa /= kappa.sum()
    s = kappa * _softmax(teacher_logits[index])
    s /= s.sum()
    best = int(np.argmax(s))
    if best == 0:
      out[index] = 0
    elif s[best] >= theta:
      out[index] = best
    else:
      out[index] = 255
  return out


# --- normalised entropy and the thresholds -----------------------------------------------------

def test_normalized_entropy_matches_reference():
  """Random logits; uniform logits give (1/K_old) / log K (the mean over channels, not the
  sum, so far below 1); peaked logits give about 0."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 3
  got = np.asarray(pseudo_labels.normalized_entropy(logits, 8))
  np.testing.assert_allclose(got, _entropy_reference(logits, 8), rtol=1e-5, atol=1e-7)
  uniform = np.asarray(pseudo_labels.normalized_entropy(jnp.zeros((1, 1, 1, 5)), 8))
  assert np.isclose(uniform[0, 0, 0], (1 / 5) / np.log(8), rtol=1e-5)
  peaked = np.asarray(pseudo_labels.normalized_entropy(
      jnp.array([[[[30.0, 0.0, 0.0]]]]), 4))
  assert 0 <= peaked[0, 0, 0] < 1e-6


def test_histogram_thresholds_mass_in_bin_zero():
  """60 of 100 counts in bin 0: the half-count 50 lies in bin 0, threshold 50/60/100."""
  histogram = np.zeros((1, 100))
  histogram[0, 0] = 60
  histogram[0, 10:50] = 1
  got = pseudo_labels.histogram_thresholds(histogram, 0.001)
  assert np.isclose(got[0], 50 / 60 / 100, rtol=1e-5)
  np.testing.assert_allclose(got, _find_median_reference(histogram, 0.001), rtol=1e-5)


def test_histogram_thresholds_spread_histogram_shows_the_quirk():
  """10 counts per bin (true median 0.5): adding bin indices 0+1+...+31 = 496 makes the scan
  stop at bin 32, threshold 0.32 + (500 - 496) / 10 / 100 = 0.324."""
  histogram = np.full((1, 100), 10.0)
  got = pseudo_labels.histogram_thresholds(histogram, 0.001)
  assert np.isclose(got[0], 0.324, rtol=1e-5)
  np.testing.assert_allclose(got, _find_median_reference(histogram, 0.001), rtol=1e-5)


def test_histogram_thresholds_empty_class_and_floor():
  """A class the teacher never predicts gets the floor 0.001; a tiny threshold is floored."""
  histograms = np.zeros((3, 100))
  histograms[0, 0] = 1000  # threshold 500 / 1000 / 100 = 0.005
  histograms[2, 0] = 1e6   # threshold 0.005 too; the floor does not bind
  got = pseudo_labels.histogram_thresholds(histograms, 0.001)
  np.testing.assert_allclose(got, [0.005, 0.001, 0.005], rtol=1e-5)
  floored = pseudo_labels.histogram_thresholds(histograms, 0.01)
  np.testing.assert_allclose(floored, [0.01, 0.01, 0.01], rtol=1e-6)


def test_histogram_thresholds_random_histograms_match_reference():
  """Random integer histograms against the loop reference: dense ones, one with its mass far
  from bin 0, one with mass in bin 0 only, and a sparse one whose scan runs past the
  half-count (no break) and ends on a non-empty bin 99 (negative value -> floor)."""
  rng = np.random.default_rng(1)
  histograms = rng.integers(1, 50, size=(6, 100)).astype(np.float64)
  histograms[1, :] = 0
  histograms[2, :] = 0
  histograms[2, 70] = 5000  # mass far from bin 0
  histograms[3, 1:] = 0
  histograms[4, :] = 0
  histograms[4, 50], histograms[4, 99] = 40, 3  # total 43: running 0, 1, 3, ... jumps past 21.5
  expected = _find_median_reference(histograms, 0.001)
  assert np.all(np.isfinite(expected)) and expected[4] == 0.001
  np.testing.assert_allclose(pseudo_labels.histogram_thresholds(histograms, 0.001), expected,
                             rtol=1e-5)


def test_histogram_thresholds_stop_on_empty_bin_gives_nan():
  """As released: the scan stops on an EMPTY bin (half == running sum exactly): total 2 in
  bin 5, half 1, running 0, 0, 1 -> stops at bin 2, 0 / 0 = NaN, kept by max(NaN, floor)."""
  histogram = np.zeros((1, 100))
  histogram[0, 5] = 2
  assert np.isnan(_find_median_reference(histogram, 0.001)[0])
  assert np.isnan(pseudo_labels.histogram_thresholds(histogram, 0.001)[0])


def test_histogram_thresholds_scan_index_29_reads_bin_28():
  """int(29 / 100 * 100) = 28: 20 counts in bin 28 and 800 in bin 90, half 410. At scan
  index 28 the running sum is 378 (378 + 20 < 410); at index 29 it is 406 and bin 28 is
  read again: 406 <= 410 <= 426 stops there, threshold 0.29 + (410 - 406) / 20 / 100."""
  histogram = np.zeros((1, 100))
  histogram[0, 28], histogram[0, 90] = 20, 800
  got = pseudo_labels.histogram_thresholds(histogram, 0.001)
  # float32 throughout, as in PyTorch: a few float32 ulps (about 1e-7 relative).
  np.testing.assert_allclose(got, [0.292], rtol=1e-6)
  np.testing.assert_allclose(got, _find_median_reference(histogram, 0.001), rtol=1e-6)


def test_histogram_thresholds_quantile_matches_reference():
  """FISS's rising quantile replaces the half-count: every quantile of its schedule on random
  histograms, against the line-by-line transcription (NaN where the reference is NaN)."""
  rng = np.random.default_rng(4)
  histograms = rng.integers(0, 30, size=(8, 100)).astype(np.float64)
  histograms[:, 20:] *= rng.integers(0, 2, size=(8, 80))  # sparse tails
  for epoch in range(8):
    quantile = pseudo_labels.quantile_of_epoch(epoch, 0.2, 0.1, 0.8)
    expected = _find_median_reference(histograms, 0.001, quantile)
    np.testing.assert_allclose(
        pseudo_labels.histogram_thresholds(histograms, 0.001, quantile), expected,
        rtol=1e-6, equal_nan=True)  # same float32 operations: equal up to float32 ulps
  assert [pseudo_labels.quantile_of_epoch(e, 0.2, 0.1, 0.8) for e in (0, 3, 6, 9)] == \
      pytest.approx([0.2, 0.5, 0.8, 0.8])


def test_histogram_thresholds_scan_past_half_on_empty_last_bin_gives_floor():
  """A small class (total 40 in bin 50): the running sum of INDICES jumps from 15 to 21 past
  the half 20, so the scan never stops and ends on bin 99, which is empty. PLOP computes
  0.99 + (20 - 4950) / 0 / 100 = -inf, floored to 0.001: such a class accepts (almost)
  nothing. (A value of 0.99 would instead accept every pixel of that class.)"""
  histogram = np.zeros((1, 100))
  histogram[0, 50] = 40
  assert _find_median_reference(histogram, 0.001)[0] == 0.001
  np.testing.assert_allclose(pseudo_labels.histogram_thresholds(histogram, 0.001), [0.001],
                             rtol=1e-6)


def test_histogram_thresholds_large_spread_class_is_infinite():
  """A large class whose counts are spread over bins 0-2 (570,000 pixels, half 285,000, no
  bin reaching it): the scan never stops, ends at bin 99 (empty) with a running sum of
  4950 < half, and the threshold is (half - 4950) / 0 = +inf: every pixel is accepted."""
  histogram = np.zeros((1, 100))
  histogram[0, :3] = [280000, 250000, 40000]
  assert np.isposinf(_find_median_reference(histogram, 0.001)[0])
  assert np.isposinf(pseudo_labels.histogram_thresholds(histogram, 0.001)[0])


def test_median_thresholds_per_argmax_class():
  """np.median of the entropies per teacher argmax class, floored; absent class -> floor."""
  rng = np.random.default_rng(2)
  entropies = rng.random(200).astype(np.float32) * 0.3
  argmax = rng.integers(0, 3, size=200)  # class 3 never predicted
  entropies[argmax == 2] *= 0.001           # median below the floor
  got = pseudo_labels.median_thresholds(entropies, argmax, 4, 0.001)
  expected = [max(np.median(entropies[argmax == c]), 0.001) for c in range(3)] + [0.001]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[2] == np.float32(0.001)


def test_entropy_histogram_counts_only_background():
  """Random case: counts equal a loop over background pixels of (argmax, int(100 H)); the
  total equals the number of background pixels."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32) * 3
  labels = rng.choice([0, 0, 3, 255], size=(2, 5, 6))
  got = np.asarray(pseudo_labels.entropy_histogram(labels, logits, 4))
  assert got.shape == (3, 100)
  assert got.sum() == np.sum(labels == 0)
  entropy = _entropy_reference(logits, 4)
  # The float32 entropy differs from this float64 one by a few ulps, which depend on the
  # CPU: no background pixel of this case lies within 0.01 bin (1e-4 of H, far above
  # float32 rounding) of a bin edge, so none can land in another bin. (Seed 3, used
  # before, had a pixel 1e-5 bin below an edge.) The argmax reads the inputs: exact.
  scaled = 100 * entropy[labels == 0]
  assert np.abs(scaled - np.round(scaled)).min() > 0.01
  argmax = logits.argmax(axis=-1)
  expected = np.zeros((3, 100), np.int64)
  for index in zip(*np.nonzero(labels == 0)):
    expected[argmax[index], min(int(entropy[index] * 100), 99)] += 1
  np.testing.assert_array_equal(got, expected)


def test_entropy_histogram_constructed_bins():
  """K_old = 3, K = 4. Uniform teacher (argmax 0): H = (1/3) / log 4 = 0.2404 -> bin 24.
  Peaked on class 2: bin 0 of row 2. A new-class pixel and a void pixel are not counted."""
  logits = np.zeros((1, 1, 5, 3), np.float32)
  logits[0, 0, 1] = [0.0, 0.0, 40.0]
  logits[0, 0, 2] = [0.0, 0.0, 40.0]
  logits[0, 0, 3] = [0.0, 40.0, 0.0]
  labels = np.array([[[0, 0, 0, 3, 255]]])
  got = np.asarray(pseudo_labels.entropy_histogram(labels, logits, 4))
  expected = np.zeros((3, 100), np.int64)
  expected[0, 24] = 1
  expected[2, 0] = 2
  np.testing.assert_array_equal(got, expected)


# --- entropy pseudo-labels -------------------------------------------------------------------------

def test_entropy_pseudo_labels_rule_and_nu():
  """Background pixels: teacher argmax when H < threshold[argmax], else 255; labels 3 (new)
  and 255 untouched even where the teacher is confident; nu = accepted / background; an image
  without background gets nu = 0."""
  logits = np.zeros((2, 1, 5, 3), np.float32)
  logits[0, 0, 0] = [0.0, 30.0, 0.0]   # confident 1 -> accepted as 1
  logits[0, 0, 1] = [0.0, 1.0, 0.5]    # uncertain -> 255
  logits[0, 0, 2] = [30.0, 0.0, 0.0]   # confident 0 -> stays 0 (accepted)
  logits[0, 0, 3] = [0.0, 0.0, 30.0]   # label 3: untouched
  logits[0, 0, 4] = [0.0, 30.0, 0.0]   # label 255: untouched
  logits[1, 0, :] = [0.0, 0.0, 30.0]
  labels = np.array([[[0, 0, 0, 3, 255]], [[3, 3, 255, 3, 3]]])
  thresholds = jnp.array([0.05, 0.05, 0.05])
  new, nu, accepted = pseudo_labels.entropy_pseudo_labels(labels, logits, thresholds, 4)
  np.testing.assert_array_equal(np.asarray(new), [[[1, 255, 0, 3, 255]], [[3, 3, 255, 3, 3]]])
  np.testing.assert_array_equal(np.asarray(accepted),
                                [[[True, False, True, False, False]], [[False] * 5]])
  np.testing.assert_allclose(np.asarray(nu), [2 / 3, 0.0], rtol=1e-5)


def test_entropy_pseudo_labels_uses_the_argmax_class_threshold():
  """Same entropy, different classes: accepted only where the threshold of the teacher's
  argmax class is above the entropy; matches a loop reference on random data."""
  logits = np.zeros((1, 1, 2, 3), np.float32)
  logits[0, 0, 0] = [0.0, 3.0, 0.0]
  logits[0, 0, 1] = [0.0, 0.0, 3.0]
  entropy = _entropy_reference(logits, 4)[0, 0, 0]
  thresholds = jnp.array([0.0, entropy * 1.01, entropy * 0.99])
  new, _, _ = pseudo_labels.entropy_pseudo_labels(np.zeros((1, 1, 2), int), logits,
                                                  thresholds, 4)
  np.testing.assert_array_equal(np.asarray(new), [[[1, 255]]])

  rng = np.random.default_rng(4)
  logits = rng.normal(size=(3, 4, 4, 3)).astype(np.float32) * 4
  labels = rng.choice([0, 0, 0, 3, 255], size=(3, 4, 4))
  thresholds = np.array([0.05, 0.1, 0.15], np.float32)
  new, nu, _ = pseudo_labels.entropy_pseudo_labels(labels, logits, jnp.asarray(thresholds), 4)
  entropy, argmax = _entropy_reference(logits, 4), logits.argmax(-1)
  expected = labels.copy()
  background = labels == 0
  ok = background & (entropy < thresholds[argmax])
  expected[background] = np.where(ok, argmax, 255)[background]
  np.testing.assert_array_equal(np.asarray(new), expected)
  np.testing.assert_allclose(np.asarray(nu),
                             ok.sum(axis=(1, 2)) / (background.sum(axis=(1, 2)) + 1e-6),
                             rtol=1e-5)


def test_entropy_pseudo_labels_nan_threshold_rejects_the_whole_class():
  """A NaN threshold (PLOP's scan stopping on an empty bin) rejects every background pixel
  whose teacher argmax is that class, however confident; other classes are unaffected."""
  logits = np.zeros((1, 1, 2, 3), np.float32)
  logits[0, 0, 0] = [0.0, 30.0, 0.0]  # entropy about 0: accepted by any positive threshold
  logits[0, 0, 1] = [0.0, 0.0, 30.0]
  thresholds = jnp.array([0.5, np.nan, 0.5], jnp.float32)
  new, nu, _ = pseudo_labels.entropy_pseudo_labels(np.zeros((1, 1, 2), int), logits,
                                                   thresholds, 4)
  np.testing.assert_array_equal(np.asarray(new), [[[255, 2]]])
  np.testing.assert_allclose(np.asarray(nu), [0.5], rtol=1e-5)  # 1 of 2 (+1e-6)


# --- prototypes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("big,small", [((4, 4), (2, 2)), ((5, 7), (3, 3)), ((3, 3), (3, 3))])
def test_resize_labels_nearest(big, small):
  """Nearest neighbour at pixel centres: output (i, j) reads input
  (int((i + .5) H / h), int((j + .5) W / w))."""
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 6, size=(2,) + big)
  got = np.asarray(pseudo_labels.resize_labels_nearest(jnp.asarray(labels), *small))
  np.testing.assert_array_equal(got, _nearest_reference(labels, *small))


def test_prototype_sums_are_per_class_at_feature_resolution():
  """Labels [2, 5, 7] resized by nearest to the features' 3 x 3; sums and counts per class
  over the whole batch; void pixels are counted nowhere."""
  rng = np.random.default_rng(6)
  features = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  labels = rng.choice([0, 1, 2, 4, 255], size=(2, 5, 7))
  sums, counts = pseudo_labels.prototype_sums(features, labels, 5)
  small = _nearest_reference(labels, 3, 3)
  expected_sums = np.zeros((5, 4))
  expected_counts = np.zeros(5)
  for index in np.ndindex(small.shape):
    if small[index] != 255:
      expected_sums[small[index]] += features[index]
      expected_counts[small[index]] += 1
  np.testing.assert_allclose(np.asarray(sums), expected_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(counts), expected_counts)
  assert np.asarray(counts)[3] == 0
  assert np.asarray(counts).sum() == np.sum(small != 255)


def test_updated_prototypes_means_padding_and_stale_classes():
  """Present classes get their mean; absent ones keep the previous prototype and seen flag;
  previous arrays with fewer classes (the last step's K) are padded with zeros / False."""
  rng = np.random.default_rng(7)
  features = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)
  labels = np.array([[[0, 0], [3, 255]]])  # at feature resolution already
  sums, counts = pseudo_labels.prototype_sums(features, labels, 5)
  sums, counts = np.asarray(sums), np.asarray(counts)
  previous = rng.normal(size=(3, 3)).astype(np.float32)
  previous_seen = np.array([True, True, False])
  prototypes, seen = pseudo_labels.updated_prototypes(previous, previous_seen, sums, counts)
  prototypes, seen = np.asarray(prototypes), np.asarray(seen)
  assert prototypes.shape == (5, 3)
  np.testing.assert_allclose(prototypes[0], features[0, 0].mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(prototypes[3], features[0, 1, 0], rtol=1e-5)
  np.testing.assert_allclose(prototypes[1:3], previous[1:3], rtol=1e-6)  # stale, kept
  np.testing.assert_array_equal(prototypes[4], np.zeros(3))
  np.testing.assert_array_equal(seen, [True, True, False, True, False])

  fresh, fresh_seen = pseudo_labels.updated_prototypes(None, None, sums, counts)
  np.testing.assert_array_equal(np.asarray(fresh_seen), [True, False, False, True, False])
  np.testing.assert_array_equal(np.asarray(fresh)[1], np.zeros(3))


# --- prototypical re-labelling -------------------------------------------------------------------

_BASIS = np.eye(4, dtype=np.float32)[:3]  # prototypes of classes 0, 1, 2 (K_old = 3)


def test_prototype_relabel_never_touches_new_or_void_pixels():
  """Teacher and features point strongly at old class 1 everywhere; pixels labelled 3 (new)
  or 255 keep their label, only background pixels become 1."""
  labels = np.array([[[3, 255, 0], [3, 3, 255]]])
  logits = np.zeros((1, 2, 3, 3), np.float32)
  logits[..., 1] = 20.0
  features = np.broadcast_to(_BASIS[1], (1, 2, 3, 4)).copy()
  new, accepted = pseudo_labels.prototype_relabel(
      labels, logits, features, _BASIS, np.ones(3, bool), 0.1, 0.5, "cosine")
  np.testing.assert_array_equal(np.asarray(new), [[[3, 255, 1], [3, 3, 255]]])
  np.testing.assert_array_equal(np.asarray(accepted), labels == 0)


def test_prototype_relabel_cases_by_hand():
  """Background pixels: confident old class with s >= theta -> that class (also when the
  prototype overrides the teacher's argmax); argmax 0 -> stays 0; best old score below
  theta -> 255.

  theta is 0.6, not 0.5: the tied pixel's best score is 0.5 - 3e-8 (one float32 ulp
  below 0.5), so with theta 0.5 its outcome would hang on the CPU's rounding."""
  logits = np.zeros((1, 1, 4, 3), np.float32)
  features = np.zeros((1, 1, 4, 4), np.float32)
  logits[0, 0, 0], features[0, 0, 0] = [0.0, 8.0, 0.0], _BASIS[1]            # -> 1
  logits[0, 0, 1], features[0, 0, 1] = [0.0, 2.0, 0.0], _BASIS[2]            # -> 2
  logits[0, 0, 2], features[0, 0, 2] = [8.0, 0.0, 0.0], _BASIS[0]            # -> 0
  logits[0, 0, 3], features[0, 0, 3] = [-9.0, 0.0, 0.0], _BASIS[1] + _BASIS[2]  # 1 vs 2 tie
  labels = np.zeros((1, 1, 4), int)
  new, accepted = pseudo_labels.prototype_relabel(
      labels, logits, features, _BASIS, np.ones(3, bool), 0.1, 0.6, "cosine")
  np.testing.assert_array_equal(np.asarray(new), [[[1, 2, 0, 255]]])
  np.testing.assert_array_equal(np.asarray(accepted), [[[True, True, True, False]]])
  expected = _relabel_reference(labels, logits, features, _BASIS, np.ones(3, bool), 0.1, 0.6)
  np.testing.assert_array_equal(np.asarray(new), expected)


def test_prototype_relabel_theta_threshold():
  """The same pixel (s_1 = e^2 / (e^2 + 1) ~ 0.88: equal similarity to prototypes 1 and 2,
  teacher logit 2 on class 1) is accepted at theta 0.8 and rejected (255) at 0.95."""
  logits = np.array([[[[0.0, 2.0, 0.0]]]], np.float32)
  features = np.array([[[[0.0, 1.0, 1.0, 0.0]]]], np.float32)
  labels = np.zeros((1, 1, 1), int)
  for theta, label in ((0.8, 1), (0.95, 255)):
    expected = _relabel_reference(labels, logits, features, _BASIS, np.ones(3, bool), 0.1,
                                  theta)
    assert expected[0, 0, 0] == label  # the case is what the docstring says
    new, _ = pseudo_labels.prototype_relabel(labels, logits, features, _BASIS,
                                             np.ones(3, bool), 0.1, theta, "cosine")
    assert int(np.asarray(new)[0, 0, 0]) == label


def test_prototype_relabel_unseen_class_is_never_chosen():
  """Class 2 has no prototype (seen False, zero vector): even where both the teacher and the
  features favour it, it is never the result, and nothing is NaN."""
  logits = np.zeros((1, 2, 2, 3), np.float32)
  logits[..., 2] = 10.0
  logits[0, 0, 0, 1] = 9.0
  features = np.broadcast_to(np.float32([0.0, 0.1, 1.0, 0.0]), (1, 2, 2, 4)).copy()
  prototypes = _BASIS.copy()
  prototypes[2] = 0.0
  seen = np.array([True, True, False])
  labels = np.zeros((1, 2, 2), int)
  new, _ = pseudo_labels.prototype_relabel(labels, logits, features, prototypes, seen, 0.1,
                                           0.5, "cosine")
  new = np.asarray(new)
  assert not np.any(new == 2)
  assert new[0, 0, 0] == 1
  np.testing.assert_array_equal(new, _relabel_reference(labels, logits, features,
                                                        prototypes, seen, 0.1, 0.5))
  # No prototype at all: kappa is uniform, s is the teacher's softmax; no NaN.
  none_seen = np.zeros(3, bool)
  new, _ = pseudo_labels.prototype_relabel(labels, logits, features, prototypes, none_seen,
                                           0.1, 0.5, "cosine")
  np.testing.assert_array_equal(np.asarray(new), np.argmax(logits, -1))


@pytest.mark.parametrize("similarity", ["cosine", "euclidean", "squared_euclidean"])
def test_prototype_relabel_random_matches_reference(similarity):
  """Random logits, features and prototypes at label resolution: the loop reference."""
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(2, 4, 4, 4)).astype(np.float32) * 3
  features = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  prototypes = rng.normal(size=(4, 5)).astype(np.float32)
  seen = np.array([True, True, False, True])
  labels = rng.choice([0, 0, 0, 4, 255], size=(2, 4, 4))
  tau = {"cosine": 0.5, "euclidean": 1.0, "squared_euclidean": 5.0}[similarity]
  new, accepted = pseudo_labels.prototype_relabel(labels, logits, features, prototypes, seen,
                                                  tau, 0.4, similarity)
  expected = _relabel_reference(labels, logits, features, prototypes, seen, tau, 0.4,
                                similarity)
  np.testing.assert_array_equal(np.asarray(new), expected)
  np.testing.assert_array_equal(np.asarray(accepted), (labels == 0) & (expected != 255))
  assert len(np.unique(expected[labels == 0])) > 1  # the case is not degenerate


def test_prototype_similarity_euclidean_and_unknown():
  """Euclidean: minus the plain distance; squared_euclidean (the first reconstruction's
  euclidean): minus the squared distance; an unknown name raises ValueError."""
  features = np.array([[[[1.0, 2.0]]]], np.float32)
  prototypes = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], np.float32)
  got = np.asarray(pseudo_labels.prototype_similarity(features, prototypes, "euclidean"))
  np.testing.assert_allclose(got[0, 0, 0], [0.0, -np.sqrt(5.0), -np.sqrt(13.0)], rtol=1e-6)
  got = np.asarray(pseudo_labels.prototype_similarity(features, prototypes,
                                                      "squared_euclidean"))
  np.testing.assert_allclose(got[0, 0, 0], [0.0, -5.0, -13.0])
  with pytest.raises(ValueError, match="similarity"):
    pseudo_labels.prototype_similarity(features, prototypes, "manhattan")
  with pytest.raises(ValueError):
    pseudo_labels.prototype_relabel(np.zeros((1, 1, 1), int), np.zeros((1, 1, 1, 3)),
                                    features, np.ones((3, 2)), np.ones(3, bool), 0.1, 0.5,
                                    "dot")


def test_prototype_relabel_low_resolution_features():
  """Features at a lower resolution than the labels: kappa is resized to the labels; with a
  constant feature map the result equals the one with the map at label resolution."""
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(1, 4, 6, 3)).astype(np.float32) * 3
  labels = rng.choice([0, 0, 3], size=(1, 4, 6))
  feature = rng.normal(size=4).astype(np.float32)
  low = np.broadcast_to(feature, (1, 2, 3, 4)).copy()
  full = np.broadcast_to(feature, (1, 4, 6, 4)).copy()
  prototypes = rng.normal(size=(3, 4)).astype(np.float32)
  args = (prototypes, np.ones(3, bool), 0.2, 0.4, "cosine")
  low_result, _ = pseudo_labels.prototype_relabel(labels, logits, low, *args)
  full_result, _ = pseudo_labels.prototype_relabel(labels, logits, full, *args)
  assert np.asarray(low_result).shape == labels.shape
  np.testing.assert_array_equal(np.asarray(low_result), np.asarray(full_result))
  np.testing.assert_array_equal(np.asarray(full_result),
                                _relabel_reference(labels, logits, full, *args))


# --- the GSC / PLOP training targets --------------------------------------------------------------------

def _config(first_reconstruction=False, **changes):
  config = synthetic.get_config("2-1,method=gsc")  # step 1: K_old = 3, K = 4
  if first_reconstruction:
    changes = {**gsc.FIRST_RECONSTRUCTION, **changes}
  for path, value in changes.items():
    section, field = path.split(".")
    config[section][field] = value
  methods.resolve_preset(config)
  return config


def _targets(config, labels, teacher_outputs, frozen):
  """The gsc method's training targets at step 1 of the config's task."""
  facts = tasks.step_facts(tasks.task_of(config), 1)
  assert (facts.num_old_classes, facts.num_classes) == (3, 4)
  return gsc.training_targets_of(config, facts)(jnp.asarray(labels), teacher_outputs, frozen,
                                                jnp.int32(0))


def _targets_case():
  """K_old = 3, K = 4, one image of 2 x 4 pixels, features at label resolution, prototypes
  the basis vectors e0, e1, e2, entropy thresholds 0.05:

  (0,0) bg, teacher confident 1, feature e1: both rules accept -> 1
  (0,1) bg, teacher confident 1 (logit 5), feature between e1 and e2: entropy accepts 1,
        prototype scores s_1 ~ s_2 ~ 0.5 -> prototype rejects at theta 0.9
  (0,2) bg, teacher uncertain [0, 1, .5], feature e1: entropy rejects, prototype gives 1
  (0,3) bg, teacher confident 0, feature e0: both give 0
  (1,0) bg, teacher confident 1 (logit 5), feature e2: entropy gives 1, prototype gives 2
  (1,1) new class 3, teacher confident 1, feature e1
  (1,2) void, teacher confident 1, feature e1
  (1,3) new class 3, teacher confident 2, feature e2
  A second image holds only new-class and void pixels (no background).
  """
  e = np.eye(4, dtype=np.float32)
  logits = np.zeros((2, 2, 4, 3), np.float32)
  features = np.zeros((2, 2, 4, 4), np.float32)
  cells = {
      (0, 0): ([0, 12, 0], e[1]),
      (0, 1): ([0, 5, 0], np.float32([0, 0.4, 0.905, 0])),
      (0, 2): ([0, 1, 0.5], e[1]),
      (0, 3): ([12, 0, 0], e[0]),
      (1, 0): ([0, 5, 0], e[2]),
      (1, 1): ([0, 12, 0], e[1]),
      (1, 2): ([0, 12, 0], e[1]),
      (1, 3): ([0, 0, 12], e[2]),
  }
  for (i, j), (logit, feature) in cells.items():
    logits[0, i, j], features[0, i, j] = logit, feature
  logits[1] = [0.0, 12.0, 0.0]
  features[1] = e[1]
  labels = np.array([[[0, 0, 0, 0], [0, 3, 255, 3]], [[3, 3, 255, 3], [3, 255, 3, 3]]])
  teacher_outputs = {"logits": jnp.asarray(logits), "head": jnp.asarray(features)}
  frozen = {"thresholds": jnp.full((1, 3), 0.05), "prototypes": jnp.asarray(e[:3]),
            "prototype_seen": jnp.ones(3, bool)}
  return labels, teacher_outputs, frozen


def _new_and_void_untouched(targets, labels):
  keep = labels != 0
  np.testing.assert_array_equal(np.asarray(targets)[keep], labels[keep])


def test_training_targets_case_preconditions():
  """The hand-built case behaves per rule as _targets_case says (checked with the loop
  references), so the combination tests below test the combination."""
  labels, teacher, _ = _targets_case()
  logits, features = np.asarray(teacher["logits"]), np.asarray(teacher["head"])
  entropy = _entropy_reference(logits, 4)[0]
  assert np.all(entropy[[0, 0, 1], [0, 1, 0]] < 0.05) and entropy[0, 2] > 0.05
  assert entropy[0, 3] < 0.05
  relabelled = _relabel_reference(labels, logits, features, np.eye(4)[:3], np.ones(3, bool),
                                  0.1, 0.9)[0]
  np.testing.assert_array_equal(relabelled, [[1, 255, 1, 0], [2, 3, 255, 3]])


def test_training_targets_without_teacher():
  """No teacher (step 0, every method): the labels unchanged and nu = 1."""
  labels, _, frozen = _targets_case()
  targets, nu = base.images_labels_as_targets(jnp.asarray(labels), None, frozen, 0)
  np.testing.assert_array_equal(np.asarray(targets), labels)
  np.testing.assert_array_equal(np.asarray(nu), [1.0, 1.0])


def test_training_targets_without_pseudo_labelling():
  """A teacher but neither rule enabled: labels unchanged, nu = 1."""
  labels, teacher, frozen = _targets_case()
  config = _config(**{"pseudo.entropy": False, "gsc.prototypes": False})
  targets, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets), labels)
  np.testing.assert_array_equal(np.asarray(nu), [1.0, 1.0])


def test_training_targets_entropy_only():
  """PLOP's rule alone equals entropy_pseudo_labels; nu = accepted / background (4/5 and 0
  for the image without background); with adaptive_factor off, nu = 1."""
  labels, teacher, frozen = _targets_case()
  config = _config(**{"gsc.prototypes": False})
  targets, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 1, 255, 0], [1, 3, 255, 3]])
  _new_and_void_untouched(targets, labels)
  np.testing.assert_allclose(np.asarray(nu), [4 / 5, 0.0], rtol=1e-5)
  config.pseudo.adaptive_factor = False
  _, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(nu), [1.0, 1.0])


def test_training_targets_filter_then_relabel():
  """The default (second reconstruction): the entropy filter decides which background pixels
  stay (the uncertain (0,2) becomes 255) and sets nu = 4/5; kept pixels take argmax s. At
  T = 1 the corrected score keeps the teacher's class everywhere here; at T = 0.1 the
  prototypes move (0,1) and (1,0), whose features lie at e2, to class 2 (score margins of
  5x and more)."""
  labels, teacher, frozen = _targets_case()
  config = _config()
  assert (config.gsc.relabel, config.gsc.similarity, config.gsc.tau) == (
      "filter_then_relabel", "euclidean", 1.0)
  targets, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 1, 255, 0], [1, 3, 255, 3]])
  _new_and_void_untouched(targets, labels)
  np.testing.assert_allclose(np.asarray(nu), [4 / 5, 0.0], rtol=1e-5)
  targets, nu = _targets(_config(**{"gsc.tau": 0.1}), labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 2, 255, 0], [2, 3, 255, 3]])
  np.testing.assert_allclose(np.asarray(nu), [4 / 5, 0.0], rtol=1e-5)


def test_training_targets_rdp():
  """relabel=rdp: every background pixel takes argmax s, none is ignored, nu = 1."""
  labels, teacher, frozen = _targets_case()
  targets, nu = _targets(_config(**{"gsc.relabel": "rdp"}), labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 1, 1, 0], [1, 3, 255, 3]])
  _new_and_void_untouched(targets, labels)
  np.testing.assert_array_equal(np.asarray(nu), [1.0, 1.0])


def test_training_targets_first_reconstruction_prototypes_only():
  """First reconstruction, prototype rule alone (pseudo.entropy False, cosine, tau 0.1,
  theta 0.9): nu = accepted / background = 4/5."""
  labels, teacher, frozen = _targets_case()
  config = _config(first_reconstruction=True, **{"pseudo.entropy": False, "gsc.theta": 0.9})
  targets, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 255, 1, 0], [2, 3, 255, 3]])
  _new_and_void_untouched(targets, labels)
  np.testing.assert_allclose(np.asarray(nu), [4 / 5, 0.0], rtol=1e-5)


def test_training_targets_first_reconstruction_both_rules():
  """First reconstruction with both rules: a pixel needs both to accept, and the prototype
  rule picks the class ((1,0) becomes 2, the teacher's argmax being 1). nu = 3/5."""
  labels, teacher, frozen = _targets_case()
  config = _config(first_reconstruction=True, **{"gsc.theta": 0.9})
  assert config.pseudo.entropy and config.gsc.prototypes and config.gsc.relabel == "first"
  targets, nu = _targets(config, labels, teacher, frozen)
  np.testing.assert_array_equal(np.asarray(targets)[0], [[1, 255, 255, 0], [2, 3, 255, 3]])
  _new_and_void_untouched(targets, labels)
  np.testing.assert_allclose(np.asarray(nu), [3 / 5, 0.0], rtol=1e-5)

"""The sharded train step over several (fake CPU) devices matches one device.

Every statistic the methods take over "the batch" or "the data" (BN statistics, PLOP's nu
and entropy thresholds, GSC's group means, class relation terms and prototypes) must be
global: the same on 4 devices as on 1.

Two kinds of check, because a sum over 4 shards rounds differently from the same sum on one
device (and the rounding of every CPU kernel depends on the CPU: its vector width, cache
sizes and thread count set the blocking of the convolutions):

* end to end (training runs on 1 and 4 devices): only quantities that are continuous in the
  rounding are compared tightly; those that read an argmax or compare a value against a
  threshold (pseudo-labels, the class relation term, mIoU) get a tolerance sized for a few
  flipped pixels, or are checked on identical inputs instead;
* on identical inputs (``test_class_relation_loss_is_global_on_a_sharded_batch``): a loss is
  evaluated once on one device and once with its batch sharded over 4, so that only the
  order of its floating-point sums differs.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gsc_jax import checkpoint

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import jax
from configs import synthetic
from gsc_jax import train
from gsc_jax import workdir
assert jax.device_count() == int(sys.argv[2]), jax.devices()
config = synthetic.get_config(
    sys.argv[3] + ",data.num_classes=5,data.image_size=64,data.crop_size=64,"
    "data.eval_size=64,data.num_val_images=8,data.eval_batch_size=4,"
    "model.backbone=resnet_tiny,model.head_channels=16,optim.batch_size=8,optim.lr_step0=0.01,"
    "optim.epochs_step0=1,log_every=1," + sys.argv[4])
train.train_and_evaluate(config, workdir.prepare(config, sys.argv[1]))
"""


def run_python(script, num_devices, *arguments):
  """Runs ``script`` in a fresh interpreter on ``num_devices`` fake CPU devices."""
  environment = dict(os.environ)
  environment["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "  # tests/conftest.py's
                              f"--xla_force_host_platform_device_count={num_devices}")
  environment["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run([sys.executable, "-c", script, *map(str, arguments)],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def run_on_devices(workdir, num_devices, config_argument):
  run_python(SCRIPT, num_devices, workdir, num_devices, *config_argument)
  return [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]


def assert_exports_match(one_dir, four_dir, step):
  one = checkpoint.read_export_arrays(str(one_dir), step)
  four = dict(jax.tree_util.tree_flatten_with_path(
      checkpoint.read_export_arrays(str(four_dir), step))[0])
  compared = 0
  for path, value in jax.tree_util.tree_flatten_with_path(one)[0]:
    if jax.tree_util.keystr(path).startswith("['batch_stats']"):
      # Running averages of global batch statistics: only the summation order differs
      # (measured <= 7e-6 absolute, about 1e-3 of this tolerance). Statistics of one
      # device's quarter of the batch would move them by 0.1 x the spread of per-device
      # means, orders of magnitude more.
      rtol, atol = 1e-3, 1e-4
    else:
      # Parameters after SGD steps: the rounding of the gradient sums (~1e-7 relative) is
      # amplified by the steps of a tiny BN network, most on the stem kernel, whose
      # gradient is a small difference of sums over every input pixel: measured up to
      # 5e-5 absolute between 1, 2 and 4 devices and 1 or 2 threads, so 3e-4 leaves a
      # margin of 6 for another CPU's rounding. (With lr 0 they are not updated at all.)
      rtol, atol = 1e-3, 3e-4
    np.testing.assert_allclose(four[path], value, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))
    compared += 1
  assert compared > 10
  return one


def test_four_devices_match_one(tmp_path):
  argument = ("offline,method=ft", "data.num_train_images=16")
  one_log = run_on_devices(tmp_path / "one", 1, argument)
  four_log = run_on_devices(tmp_path / "four", 4, argument)
  one_losses = [record["loss"] for record in one_log if "loss" in record]
  four_losses = [record["loss"] for record in four_log if "loss" in record]
  assert len(one_losses) == 2
  # Plain cross-entropy on ground-truth labels, a continuous function of parameters that
  # differ by rounding only (~1e-7 relative; measured equal to float32 precision).
  np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
  one_export = assert_exports_match(tmp_path / "one", tmp_path / "four", 0)
  # Batch statistics are global: running means moved the same way on 1 and 4 devices.
  assert not np.allclose(one_export["batch_stats"]["backbone"]["stem_bn"]["mean"], 0.0)
  one_summary = checkpoint.read_json(checkpoint.metrics_path(str(tmp_path / "one"), 0))
  four_summary = checkpoint.read_json(checkpoint.metrics_path(str(tmp_path / "four"), 0))
  # Which images and classes were scored depends on the labels only: exact.
  assert one_summary["num_test_images"] == four_summary["num_test_images"] == 8
  assert ({k for k, v in one_summary["iou"].items() if v is None}
          == {k for k, v in four_summary["iou"].items() if v is None})
  # mIoU counts argmax predictions: a pixel whose two best logits are closer than what the
  # parameters' rounding differences (up to 1e-4 relative after two SGD steps) move them
  # may flip, moving a class IoU by about 1 / its union (thousands of pixels here), i.e.
  # mIoU by <= ~1e-4 per pixel. Measured 3e-5 (a few pixels); 2e-3 allows tens of them.
  assert np.isclose(one_summary["all"], four_summary["all"], rtol=0, atol=2e-3)


def test_gsc_statistics_are_global(tmp_path):
  """GSC's step 1 on 1 and 4 devices from the same step 0: thresholds, prototypes, nu,
  group means, the loss terms and the exported model agree.

  The incremental learning rate is 1e-30 (0 is refused): updates that small round away in
  float32, so every iteration sees the same parameters on 1 and 4 devices and any difference can only come from how a statistic is reduced (the
  BN statistics, also global, still move the running averages)."""
  # The exact quantile thresholds: on so few images the released histogram rule refuses
  # every pixel (nu = 0), which would leave the pseudo-labels untested.
  common = ("data.num_train_images=40,optim.epochs_incremental=2,optim.lr_incremental=1e-30,"
            "gsc.class_relation=fiss,pseudo.thresholds=median")
  run_on_devices(tmp_path / "step0", 1, ("3-1,method=gsc", common + ",last_step=0"))
  argument = ("3-1,method=gsc", f"{common},init_step0_from={tmp_path / 'step0'}")
  one_log = run_on_devices(tmp_path / "one", 1, argument)
  four_log = run_on_devices(tmp_path / "four", 4, argument)
  one_train = [record for record in one_log if "loss" in record and record["step"] == 1]
  four_train = [record for record in four_log if "loss" in record and record["step"] == 1]
  assert len(one_train) >= 2 and len(one_train) == len(four_train)
  # The teacher's outputs differ by rounding between 1 and 4 devices (per-device batches
  # of 2 images instead of 8 change the convolutions' blocking), so a pixel whose entropy
  # sits on its threshold, or whose prototype score sits on theta, can flip its
  # pseudo-label. One flipped pixel of the 8 x 64 x 64 batch moves the pixel means ce, nu
  # and soft_label by <= ~2e-4 relative (measured differences: ~1e-7); a mean over one
  # device's 2 images instead of all 8 moves them by percent (they differ by 5% between
  # successive batches of 8 here). A flip moves a group's mean over ~10^4 pixels by ~1e-5.
  # The Local POD and sharpening terms read no label and no argmax: rounding only.
  tolerances = {"ce": 2e-3, "nu": 2e-3, "soft_label": 2e-3, "group_means": 1e-4,
                "weight_mean": 2e-3, "gradient_share": 2e-3, "pod": 1e-4, "sharpening": 1e-4}
  for one_record, four_record in zip(one_train, four_train):
    for key, rtol in tolerances.items():
      np.testing.assert_allclose(four_record[key], one_record[key], rtol=rtol, atol=1e-6,
                                 err_msg=f"{key} at iteration {one_record['iteration']}")
    # Not compared: the class relation term reads the student's ARGMAX over classes and
    # averages over the few pixels predicted as each old class, so near-tied pixels that
    # flip with the reduction order move it by tens of percent (84% between 1 and 2
    # threads on ONE device here). test_class_relation_loss_is_global_on_a_sharded_batch
    # checks that it is global on inputs without near-ties.
    for record in (one_record, four_record):
      assert np.isfinite(record["relation"]) and record["relation"] >= 0
  assert 0.0 < one_train[0]["nu"] <= 1.0
  assert any(mean > 0 for mean in one_train[0]["group_means"])
  thresholds = [checkpoint.load_pass_result(str(d), 1, "entropy_thresholds")["thresholds"]
                for d in (tmp_path / "one", tmp_path / "four")]
  # Exact quantiles of the teacher's entropies over the pass's pixels: rounding of the
  # entropies (~1e-7 relative), or a pixel whose argmax flips, moving the quantile to a
  # neighbouring value (measured: equal). A quantile over one device's quarter of the
  # pixels would differ by the spread of the entropies (percent).
  np.testing.assert_allclose(thresholds[1], thresholds[0], rtol=1e-4)
  prototypes = [checkpoint.load_pass_result(str(d), 1, "teacher_prototypes")
                for d in (tmp_path / "one", tmp_path / "four")]
  # A class has a prototype if the teacher's argmax or the labels give it pixels in this
  # step's images; a class's pixel count would have to fall to 0 by one flip to differ.
  np.testing.assert_array_equal(prototypes[1]["prototype_seen"],
                                prototypes[0]["prototype_seen"])
  assert prototypes[0]["prototype_seen"].sum() >= 1  # this short step 0 predicts few classes
  # Class means of the teacher's head features over the step's 15 images, 16 feature pixels
  # each: rounding of the sums only. A per-device mean over a quarter of the images would
  # differ by the spread of the features (order 1). Not covered: a teacher argmax flip at
  # one of the 240 feature pixels would move a class mean by ~1/its count (percent); a
  # pixel that close to a tie among so few is unlikely.
  np.testing.assert_allclose(prototypes[1]["prototypes"], prototypes[0]["prototypes"],
                             rtol=1e-3, atol=1e-4)
  assert_exports_match(tmp_path / "one", tmp_path / "four", 1)


# --- the class relation term on identical inputs ---------------------------------------------

RELATION_SCRIPT = """
import json
import sys
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from gsc_jax import losses
assert jax.device_count() == 4, jax.devices()
with np.load(sys.argv[1]) as archive:
  inputs = {key: archive[key] for key in archive.files}
batch_names = ("logits", "labels", "teacher_logits")
relation = jax.jit(losses.class_relation_loss)

device = jax.devices()[0]
on_one = [jax.device_put(inputs[name], device) for name in batch_names]
one = relation(*on_one, jax.device_put(inputs["class_weights"], device))

mesh = Mesh(np.array(jax.devices()), ("data",))
batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
sharded = [jax.device_put(inputs[name], batch_sharding) for name in batch_names]
for array in sharded:  # really split: each device holds a quarter of the batch
  assert len(array.sharding.device_set) == 4
  assert {shard.data.shape[0] for shard in array.addressable_shards} == {len(array) // 4}
four = relation(*sharded,
                jax.device_put(inputs["class_weights"], NamedSharding(mesh, PartitionSpec())))
assert len(four.sharding.device_set) == 4  # computed by the 4-device program
print(json.dumps({"one_device": float(one), "four_devices": float(four)}))
"""


def _relation_numpy(logits, labels, teacher_logits, class_weights):
  """``losses.class_relation_loss`` transcribed from its docstring, in float64."""
  def confidence(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).max(axis=-1)
  student_confidence, teacher_confidence = confidence(logits), confidence(teacher_logits)
  predicted = np.argmax(logits, axis=-1)
  terms = []
  for c in range(teacher_logits.shape[-1]):
    if (predicted == c).any() and (labels == c).any():
      terms.append(class_weights[c] * abs(student_confidence[predicted == c].mean()
                                          - teacher_confidence[labels == c].mean()))
  return sum(terms) / max(len(terms), 1)


def _relation_inputs():
  """A batch of 8 images (2 per device on 4), K = 6 channels, K_old = 4.

  Every pixel's argmax is decided by a margin: uniform noise in [0, 1) plus a margin of at
  least 2 on one class, so the best logit leads by >= 1 and no reduction order can change
  it. The shards differ: shard d's images favour old class d, in the student's
  predictions and in the labels, and the margin (so the student's confidence) grows with
  the image index (2 to 5.5); the class weights grow with the class index. Averaging
  per-shard values therefore weights the confidence levels differently from the global
  class means."""
  rng = np.random.default_rng(0)
  batch, height, width, num_classes, num_old = 8, 6, 6, 6, 4
  winners = np.empty((batch, height, width), np.int64)
  labels = np.empty((batch, height, width), np.int32)
  for image in range(batch):
    favoured = np.full(num_classes, 1.0)
    favoured[image // 2] = 4.0
    favoured /= favoured.sum()
    winners[image] = rng.choice(num_classes, size=(height, width), p=favoured)
    labels[image] = rng.choice(num_classes, size=(height, width), p=favoured)
  labels[rng.random(labels.shape) < 0.1] = 255
  margins = 2.0 + 0.5 * np.arange(batch)[:, None, None, None]
  logits = (rng.random((batch, height, width, num_classes))
            + margins * np.eye(num_classes)[winners]).astype(np.float32)
  teacher_logits = rng.normal(size=(batch, height, width, num_old)).astype(np.float32)
  class_weights = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
  top_two = np.sort(logits, axis=-1)[..., -2:]
  assert (top_two[..., 1] - top_two[..., 0]).min() >= 1.0  # no near-tie anywhere
  return {"logits": logits, "labels": labels, "teacher_logits": teacher_logits,
          "class_weights": class_weights}


def test_class_relation_loss_is_global_on_a_sharded_batch(tmp_path):
  """jax.jit(class_relation_loss) with the batch sharded over a 4-device "data" mesh equals
  the one-device value and the float64 global reference, and both are far from the mean
  of per-shard values (what a per-device statistic would give)."""
  inputs = _relation_inputs()
  path = tmp_path / "relation_inputs.npz"
  np.savez(path, **inputs)
  values = json.loads(run_python(RELATION_SCRIPT, 4, path).strip().splitlines()[-1])

  batch_names = ("logits", "labels", "teacher_logits")
  global_value = _relation_numpy(*(inputs[name] for name in batch_names),
                                 inputs["class_weights"])
  per_device = np.mean([
      _relation_numpy(*(np.split(inputs[name], 4)[device] for name in batch_names),
                      inputs["class_weights"])
      for device in range(4)])
  # The same program on the same inputs: the counts are exact small integers and the
  # argmax cannot change (margins >= 1), so only the order of the float32 sums of
  # confidences differs (per-shard partial sums, then an all-reduce): a few ulps of sums
  # of 288 values in [0, 1], ~1e-7 relative (measured: 7e-8).
  rtol = 1e-5
  np.testing.assert_allclose(values["four_devices"], values["one_device"], rtol=rtol)
  # float32 against float64: each class mean of confidences in [0, 1] is off by a few
  # ulps (~1e-7 absolute); the loss (~0.4) is a weighted mean of 4 gaps |a_c - b_c| of
  # 0.2 to 0.4, so no cancellation amplifies that (measured: 5e-8 relative).
  np.testing.assert_allclose(values["one_device"], global_value, rtol=rtol)
  # The test can tell a per-device statistic: averaging per-shard values is off by far
  # more than the tolerance (here by 7% of the value, 70 times the bound below).
  assert abs(per_device - global_value) > 100 * rtol * global_value, (per_device,
                                                                      global_value)

"""Gradient accumulation (``optim.accumulation_steps``, gsc_jax/train_step.py,
docs/precision_and_accumulation.md): k = 1 is the plain step; the accumulated gradient is
the mean of the plain step's micro-batch gradients; where the micro-batches have the
statistics of the whole batch (the same images repeated) one accumulated update is the
one-batch update; the BN running averages are those of the whole batch; one iteration and
one schedule step per update; the same on a 2-device mesh; every method runs with k = 2."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import tasks
from gsc_jax import train
from gsc_jax import train_step as train_step_lib
from gsc_jax import validation
from gsc_jax import workdir as workdir_lib
from gsc_jax.models import resnet
from gsc_jax.models import step_model

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, BATCH, K = 32, 4, 2


def label_targets(labels, teacher_outputs, frozen, epoch):
  """The labels are the targets (void included); nu depends on each image only, so that a
  repeated image gets the same nu in every micro-batch."""
  del teacher_outputs, frozen, epoch
  return labels, 0.5 + 0.5 * jnp.mean((labels == 0).astype(jnp.float32), axis=(1, 2))


def _setup():
  """GSC at step 1 of 2-1 (K_old = 3, K = 4: compensation, relation, POD) on a tiny random
  model; its targets are the batch's labels (``label_targets``)."""
  config = synthetic.get_config(
      f"2-1,method=gsc,model.backbone=resnet_tiny,model.head_channels=8,"
      f"data.crop_size={SIZE},optim.accumulation_steps={K}")
  methods.resolve_preset(config)
  facts = tasks.step_facts(tasks.task_of(config), 1)
  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
  images = jax.random.normal(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  labels = jnp.asarray(np.random.default_rng(0).choice([0, 1, 2, 3, 255],
                                                       size=images.shape[:3]), jnp.int32)
  teacher_variables = teacher_model.init(jax.random.key(1), images, train=False)
  variables = model.init(jax.random.key(2), images, train=False)
  method = methods.build(config, facts, model, teacher_model)._replace(
      training_targets=label_targets)
  optimizer, schedule = train_step_lib.make_optimizer(config.optim, 0.01, 100)
  return {"config": config, "model": model, "teacher_model": teacher_model,
          "method": method, "optimizer": optimizer, "schedule": schedule,
          "state": train_step_lib.create_train_state(variables, optimizer, method),
          "frozen": {"teacher": teacher_variables},
          "batch": {"image": images, "label": labels}}


def _train_step(setup, accumulation_steps):
  return jax.jit(train_step_lib.make_train_step(
      setup["model"], setup["teacher_model"], setup["method"], setup["optimizer"], 10,
      accumulation_steps=accumulation_steps))


@pytest.fixture(scope="module")
def gsc():
  """One ``_setup()`` and its jitted steps for k = 1 and k = K, shared by the tests below
  (each compile of GSC's step takes seconds; the batch is an argument, so a test may pass
  another one of the same shape)."""
  setup = _setup()
  # k = K from the optimiser (optim.accumulation_steps), the default of make_train_step.
  return setup, {1: _train_step(setup, 1), K: _train_step(setup, None)}


def _leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_trees_close(actual, expected, rtol, atol_scale, start=None):
  """Leafwise |a - e| <= rtol * |e| + atol_scale * max|e - s|: the leaf's own scale, or,
  with ``start`` (s), the scale of its change from there (an update)."""
  starts = _leaves(expected) if start is None else _leaves(start)
  for a, e, s in zip(_leaves(actual), _leaves(expected), starts, strict=True):
    assert a.shape == e.shape and a.dtype == e.dtype
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
      np.testing.assert_array_equal(a, e)
    else:
      reference = e if start is None else e.astype(np.float64) - s
      scale = float(np.max(np.abs(reference))) if e.size else 0.0
      np.testing.assert_allclose(a, e, rtol=rtol, atol=atol_scale * scale + 1e-30)


def test_micro_batches_take_every_kth_row():
  batch = {"x": jnp.arange(12).reshape(6, 2)}
  split = train_step_lib.micro_batches(batch, 3)["x"]
  np.testing.assert_array_equal(split[:, :, 0], [[0, 6], [2, 8], [4, 10]])


def test_optimizer_carries_the_accumulation_steps():
  config = synthetic.get_config(f"2-1,optim.accumulation_steps={K}")
  assert train_step_lib.make_optimizer(config.optim, 0.01, 100)[0].accumulation_steps == K
  config = synthetic.get_config("2-1")
  assert train_step_lib.make_optimizer(config.optim, 0.01, 100)[0].accumulation_steps == 1


def test_one_micro_batch_is_the_plain_step_exactly(gsc):
  """(a) k = 1: the step is steps 1-5 of ``make_loss_gradients`` and one optimiser update,
  bit for bit."""
  setup, steps = gsc
  step = steps[1]
  state, scalars = step(setup["state"], setup["frozen"], setup["batch"])
  loss_gradients = train_step_lib.make_loss_gradients(
      setup["model"], setup["teacher_model"], setup["method"], 10)

  @jax.jit
  def plain(state, frozen, batch):
    gradients, batch_stats, transform_state, scalars = loss_gradients(state, frozen, batch)
    updates, opt_state = setup["optimizer"].update(gradients, state["opt_state"],
                                                   state["params"])
    params = jax.tree.map(jnp.add, state["params"], updates)
    return {"iteration": state["iteration"] + 1, "params": params,
            "batch_stats": batch_stats, "opt_state": opt_state,
            "gradient_transform": transform_state}, scalars

  expected_state, expected_scalars = plain(setup["state"], setup["frozen"], setup["batch"])
  for actual, expected in zip(_leaves(state), _leaves(expected_state), strict=True):
    np.testing.assert_array_equal(actual, expected)
  for name, value in expected_scalars.items():
    np.testing.assert_array_equal(scalars[name], value)


def test_accumulated_gradient_is_the_mean_of_micro_batch_gradients(gsc):
  """(b) The accumulated gradient is the mean of the gradients the plain loss function
  gives each micro-batch (rows i mod k), the compensation state carried from one to the
  next; the BN running averages are the whole batch's: for the stem BN, whose input does
  not depend on the other BNs, those of the plain step on the whole batch, and for every
  BN the pooled micro-batch statistics (law of total variance)."""
  setup, _ = gsc
  state, frozen, batch = setup["state"], setup["frozen"], setup["batch"]
  accumulated = jax.jit(train_step_lib.make_accumulated_loss_gradients(
      setup["model"], setup["teacher_model"], setup["method"], 10, K))
  gradients, batch_stats, transform_state, scalars = accumulated(state, frozen, batch)

  plain = jax.jit(train_step_lib.make_loss_gradients(
      setup["model"], setup["teacher_model"], setup["method"], 10))
  micro = train_step_lib.micro_batches(batch, K)
  micro_state, micro_results = dict(state), []
  for j in range(K):
    result = plain(micro_state, frozen, jax.tree.map(lambda x, j=j: x[j], micro))
    micro_results.append(result)
    micro_state["gradient_transform"] = result[2]
  expected = jax.tree.map(lambda *g: sum(g) / K, *[result[0] for result in micro_results])
  # The same float32 operations, compiled once inside a scan and once on their own: XLA
  # may fuse the convolutions' reductions differently, a few ulps (~1e-7 relative) per
  # element that the backward pass spreads; 1e-5 of each leaf's largest value bounds that
  # with margin (measured: below 1e-6), while any other weighting of the micro-batches
  # (a sum, or one micro-batch alone) is off by O(1).
  _assert_trees_close(gradients, expected, rtol=1e-5, atol_scale=1e-5)
  _assert_trees_close(transform_state, micro_results[-1][2], rtol=1e-5, atol_scale=1e-6)
  for name in ("loss", "ce", "pod"):
    np.testing.assert_allclose(scalars[name], np.mean([r[3][name] for r in micro_results]),
                               rtol=1e-5)

  # Every BN: each plain call started from the old averages (fresh: mean 0, var 1), so
  # u_j = m * old + (1 - m) * stat_j gives stat_j back (float64, from float32 u_j: error
  # ~ ulp(1) / (1 - m) ~ 1e-6 on the variances).
  m = resnet.BATCH_NORM_MOMENTUM
  old = jax.tree.map(lambda x: np.asarray(x, np.float64), state["batch_stats"])
  updates = [jax.tree.map(lambda x: np.asarray(x, np.float64), r[1]) for r in micro_results]

  def pooled(old_leaf, *update_leaves):
    return [(u - m * old_leaf) / (1 - m) for u in update_leaves]

  flat_old = jax.tree_util.tree_flatten_with_path(old)[0]
  flat_new = dict(jax.tree_util.tree_flatten_with_path(batch_stats)[0])
  flat_updates = [dict(jax.tree_util.tree_flatten_with_path(u)[0]) for u in updates]
  checked = 0
  for path, old_leaf in flat_old:
    if path[-1].key != "mean":
      continue
    var_path = path[:-1] + (jax.tree_util.DictKey("var"),)
    means = pooled(old_leaf, *[u[path] for u in flat_updates])
    variances = pooled(dict(flat_old)[var_path], *[u[var_path] for u in flat_updates])
    mean = np.mean(means, axis=0)
    variance = np.mean(variances, axis=0) + np.mean([(mu - mean) ** 2 for mu in means],
                                                    axis=0)
    np.testing.assert_allclose(flat_new[path], m * old_leaf + (1 - m) * mean, atol=1e-6)
    np.testing.assert_allclose(flat_new[var_path], m * dict(flat_old)[var_path]
                               + (1 - m) * variance, rtol=1e-5, atol=1e-6)
    checked += 1
  assert checked > 10

  # The stem BN reads the first convolution of the images alone: its running averages
  # must be the plain whole-batch step's (float32 sums in another order: ~1e-7).
  _, whole_batch_stats, _, _ = plain(state, frozen, batch)
  _assert_trees_close(batch_stats["backbone"]["stem_bn"],
                      whole_batch_stats["backbone"]["stem_bn"], rtol=1e-5, atol_scale=1e-6)
  # ... and a deeper one is not (ghost BN in the forward pass changes its input).
  deeper = ("head", "red_bn")
  assert not np.allclose(batch_stats[deeper[0]][deeper[1]]["var"],
                         whole_batch_stats[deeper[0]][deeper[1]]["var"], rtol=1e-4)


def test_repeated_micro_batches_give_the_one_batch_update(gsc):
  """(b) A batch whose k micro-batches are the same images (row i = image i // k) has, in
  every micro-batch, the BN statistics, loss normalisations and compensation group means of
  the whole batch: the accumulated step equals the plain one on the whole batch."""
  images = jax.random.normal(jax.random.key(0), (BATCH // K, SIZE, SIZE, 3))
  labels = jnp.asarray(np.random.default_rng(0).choice([0, 1, 2, 3, 255],
                                                       size=images.shape[:3]), jnp.int32)
  setup, steps = gsc
  batch = {"image": jnp.repeat(images, K, axis=0), "label": jnp.repeat(labels, K, axis=0)}
  one_batch, _ = steps[1](setup["state"], setup["frozen"], batch)
  accumulated, scalars = steps[K](setup["state"], setup["frozen"], batch)
  one_batch, accumulated = jax.tree.map(np.asarray, (one_batch, accumulated))
  # Both compute the same quantities from the same images; only the float32 reductions
  # differ (over B/k rows twice instead of B rows once, in other blockings): a few ulps,
  # ~1e-7 relative, per statistic, carried through the forward and backward passes. The
  # momentum buffer after one step holds the gradient (plus weight decay): measured within
  # 5e-5 of each leaf's largest value, the worst being the image-pool branch, whose BN
  # normalises over B values per channel only (2 and 4 here), which amplifies rounding by
  # cancellation; 3e-4 keeps a margin and is still far below the O(1) error of a
  # micro-batch weighted wrongly. A parameter is its start plus an update ~1e-3 of its
  # size: it may differ by its float32 rounding (4 ulps, 5e-7 relative) plus the same
  # 3e-4 of the leaf's largest update.
  start = setup["state"]
  _assert_trees_close(accumulated["opt_state"], one_batch["opt_state"], rtol=1e-5,
                      atol_scale=3e-4)
  _assert_trees_close(accumulated["params"], one_batch["params"], rtol=5e-7, atol_scale=3e-4,
                      start=start["params"])
  _assert_trees_close(accumulated["batch_stats"], one_batch["batch_stats"], rtol=1e-5,
                      atol_scale=1e-6)
  _assert_trees_close(accumulated["gradient_transform"], one_batch["gradient_transform"],
                      rtol=1e-5, atol_scale=1e-6)
  assert int(accumulated["iteration"]) == int(one_batch["iteration"]) == 1
  assert np.all(np.asarray(scalars["finite"]))


def _counts(opt_state):
  """Every step counter of the optax state (the schedule's count among them)."""
  return [int(leaf) for leaf in jax.tree.leaves(opt_state)
          if np.issubdtype(np.asarray(leaf).dtype, np.integer)]


def test_one_iteration_and_one_schedule_step_per_update(gsc):
  """(c) Three accumulated steps are three iterations and three schedule steps (the step
  whose k = K comes from the optimiser)."""
  setup, steps = gsc
  step = steps[K]
  state = setup["state"]
  assert _counts(state["opt_state"]) and set(_counts(state["opt_state"])) == {0}
  for _ in range(3):
    state, scalars = step(state, setup["frozen"], setup["batch"])
    assert np.all(np.asarray(scalars["finite"]))
  assert int(state["iteration"]) == 3
  assert set(_counts(state["opt_state"])) == {3}


def test_validation_refuses_a_batch_that_does_not_split():
  config = synthetic.get_config(
      "15-1,optim.batch_size=24,optim.accumulation_steps=3,data.eval_batch_size=24")
  set_options = methods.options_set(config)
  methods.resolve_preset(config)
  validation.validate(config, 8, set_options)  # 24 = 3 x 8: micro-batch 1 per device
  with pytest.raises(errors.InputError) as raised:
    validation.validate(config, 6, set_options)
  message = str(raised.value)
  assert message == (
      "invalid config: optim.batch_size=24 must be divisible by optim.accumulation_steps x "
      "devices = 3 x 6 = 18 (each micro-batch is split over every device): set "
      "optim.accumulation_steps to one of [1, 2, 4], or optim.batch_size to a multiple of 18")


DEVICES_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from gsc_jax import platform_flags
platform_flags.set_default_cpu_flags()  # as in the test process (tests/conftest.py)
import jax, numpy as np
from tests import test_accumulation as t
from gsc_jax import mesh as mesh_lib

assert jax.device_count() == 2, jax.devices()
setup = t._setup()
step = t._train_step(setup, t.K)
with np.load(sys.argv[2]) as saved:  # the one-device step of the test process
  one_device = {"opt_state": [saved[f"opt_state_{i}"] for i in range(int(saved["opt_states"]))],
                "params": [saved[f"params_{i}"] for i in range(int(saved["params"]))]}
mesh = mesh_lib.make_mesh()
sharded = jax.device_put(setup["batch"], mesh_lib.batch_sharded(mesh))
replicated = mesh_lib.replicate({"state": setup["state"], "frozen": setup["frozen"]}, mesh)
two_devices, scalars = step(replicated["state"], replicated["frozen"], sharded)
micro = jax.jit(lambda b: t.train_step_lib.micro_batches(b, t.K))(sharded)["image"]
def leaves(tree):
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)
          if np.issubdtype(np.asarray(leaf).dtype, np.floating)]
gradient_deviation = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
                         for a, b in zip(leaves(two_devices["opt_state"]),
                                         leaves(one_device["opt_state"])))
update_deviation = max(float(np.max(np.maximum(np.abs(a - b) - 5e-7 * np.abs(b), 0.0))
                             / max(np.max(np.abs(b - s)), 1e-30))
                       for a, b, s in zip(leaves(two_devices["params"]),
                                          leaves(one_device["params"]),
                                          leaves(setup["state"]["params"])))
print(json.dumps({"gradient_deviation": gradient_deviation,
                  "update_deviation": update_deviation,
                  "finite": bool(np.all(scalars["finite"])),
                  "iteration": int(two_devices["iteration"]),
                  "micro_spec": [str(axis) for axis in micro.sharding.spec],
                  "rows_per_device": sorted({shard.data.shape[1]
                                             for shard in micro.addressable_shards})}))
"""


def _float_leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)
          if np.issubdtype(np.asarray(leaf).dtype, np.floating)]


def test_accumulation_on_two_devices_matches_one(gsc, tmp_path):
  """(d) The accumulated step with the batch sharded over a 2-device "data" mesh equals the
  one-device step (computed here, in the test process); every micro-batch stays split
  over both devices."""
  setup, steps = gsc
  one_device, _ = steps[K](setup["state"], setup["frozen"], setup["batch"])
  opt_states, params = (_float_leaves(one_device[key]) for key in ("opt_state", "params"))
  expected = tmp_path / "one_device.npz"
  np.savez(expected, opt_states=len(opt_states), params=len(params),
           **{f"opt_state_{i}": leaf for i, leaf in enumerate(opt_states)},
           **{f"params_{i}": leaf for i, leaf in enumerate(params)})
  environment = dict(os.environ, JAX_PLATFORMS="cpu",
                     XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                     + " --xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, REPO, str(expected)],
                          cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  values = json.loads(result.stdout.strip().splitlines()[-1])
  assert values["finite"] and values["iteration"] == 1
  # Each micro-batch of 2 rows keeps one row on each device: no resharding of the batch.
  assert values["rows_per_device"] == [BATCH // K // 2]
  assert values["micro_spec"][:2] == ["None", "data"]
  # Global BN and loss statistics summed over 2 shards instead of 1 round differently:
  # ~1e-7 relative per statistic, which the ill-conditioned gradients of the tiny random
  # network amplify as in ``test_repeated_micro_batches_give_the_one_batch_update``: the
  # same bounds, 3e-4 of each leaf's largest gradient (momentum buffer) and, beyond 4
  # float32 ulps, of its largest update (measured: 2e-5 and 5e-5 at XLA's default
  # optimisation level; 3.4e-4 with the level 0 of the test suite, tests/conftest.py,
  # whose unfused kernels round more): 1e-3. A per-device statistic or a micro-batch left
  # out would be off by O(1).
  assert values["gradient_deviation"] < 1e-3, values
  assert values["update_deviation"] < 1e-3, values


@pytest.fixture(scope="module")
def gsc_run(tmp_path_factory):
  """Step 0 (the same for every method) and step 1 of GSC with k = 2."""
  workdir = tmp_path_factory.mktemp("accumulated_gsc")
  return workdir, _run(workdir, "gsc")


TINY = ("3-1,data.num_classes=5,data.image_size=32,data.crop_size=32,data.eval_size=32,"
        "data.num_train_images=48,data.num_val_images=8,data.eval_batch_size=8,"
        "model.backbone=resnet_tiny,model.head_channels=8,optim.batch_size=8,"
        "optim.accumulation_steps=2,optim.epochs_step0=1,optim.epochs_incremental=1,"
        "log_every=1,checkpoint_every=100")


def _run(workdir, method, extra=""):
  config = synthetic.get_config(f"{TINY},method={method}{extra}")
  return train.train_and_evaluate(config, workdir_lib.prepare(config, str(workdir)))


@pytest.mark.parametrize("method", ["ft", "mib", "plop", "gsc"])
def test_every_method_trains_with_two_micro_batches(method, gsc_run, tmp_path):
  """The driver end to end with k = 2 (batch 8 in two micro-batches of 4, one epoch)."""
  gsc_workdir, gsc_summaries = gsc_run
  summaries = gsc_summaries if method == "gsc" else _run(
      tmp_path, method, f",init_step0_from={gsc_workdir}")
  assert [summary["step"] for summary in summaries] == [0, 1]
  assert all(0.0 <= summary["all"] <= 1.0 for summary in summaries)
  workdir = gsc_workdir if method == "gsc" else tmp_path
  with open(os.path.join(workdir, "log.jsonl")) as log:
    lines = [json.loads(line) for line in log]
  progress = [line for line in lines if "iteration" in line and "loss" in line]
  assert progress and all(np.isfinite(line["loss"]) for line in progress)

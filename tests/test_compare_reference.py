"""The reference comparison's tree layouts, configs, tables and the driver's stand-ins.

The released MiB / PLOP code is not available here; what is tested is everything of the
comparison that is this project's: that the tree is laid out as the released readers parse
it, that both sides get the same settings, and how the table and verdict are computed.
"""

import json
import os

import numpy as np
import pytest

from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import metrics
from gsc_jax import tasks
from gsc_jax import validation
from gsc_jax.tools import compare_reference
from gsc_jax.tools import reference_driver

TASK = tasks.get_task("voc", "15-5", 21)


def arguments(tmp_path, *extra):
  code = tmp_path / "code"
  code.mkdir(exist_ok=True)
  (code / "run.py").write_text("")
  return compare_reference.parse_args(
      ["--method=mib", f"--reference_code={code}", f"--out={tmp_path / 'out'}",
       "--num_train=6", "--num_val=4", "--image_size=32", *extra])


def released_list(path):
  """The released readers' parse of a split list: ``x[:-1].split(' ')`` per line."""
  with open(path) as file:
    return [line[:-1].split(" ") for line in file.readlines()]


def test_tree_lists_and_links_are_where_both_released_readers_look(tmp_path):
  args = arguments(tmp_path)
  tree = compare_reference.write_tree(args)
  compare_reference.write_tree(args)  # a second call (a resumed comparison) changes nothing
  for split, count in (("train_aug", 6), ("val", 4)):
    # MiB: <root>/PascalVOC12/splits, both paths under <root>/PascalVOC12.
    mib_root = os.path.join(tree, "PascalVOC12")
    entries = released_list(os.path.join(mib_root, "splits", f"{split}.txt"))
    assert len(entries) == count
    for image, label in entries:
      assert os.path.isfile(os.path.join(mib_root, image[1:]))
      assert os.path.isfile(os.path.join(mib_root, label[1:]))
    # PLOP: <root>/list, images under <root>/VOCdevkit/VOC2012, labels under <root>.
    entries = released_list(os.path.join(tree, "list", f"{split}.txt"))
    assert len(entries) == count
    for image, label in entries:
      assert os.path.isfile(os.path.join(tree, "VOCdevkit/VOC2012", image[1:]))
      assert os.path.isfile(os.path.join(tree, label[1:]))


@pytest.mark.parametrize("method, eval_unseen", [("mib", "ignore"), ("plop", "background")])
def test_gsc_jax_side_gets_the_comparison_settings(tmp_path, method, eval_unseen):
  args = arguments(tmp_path, "--epochs=3,2", "--lr=0.1,0.03", "--batch_size=8")
  args.method = method
  config = compare_reference.gsc_jax_config(args, "/data/tree", seed=4)
  assert (config.method, config.seed, config.task, config.data.root) == (
      method, 4, "15-5", "/data/tree")
  assert (config.model.backbone, config.model.head_channels) == ("resnet_tiny", 64)
  assert (config.data.crop_size, config.data.eval_size) == (32, 32)
  assert (config.optim.batch_size, config.data.eval_batch_size) == (8, 8)
  assert (config.optim.epochs_step0, config.optim.epochs_incremental) == (3, 2)
  assert (config.optim.lr_step0, config.optim.lr_incremental) == (0.1, 0.03)
  assert config.data.eval_unseen == eval_unseen
  assert config.data.split_cache_dir == ""
  with config.unlocked():
    methods.resolve_preset(config)
  validation.validate(config, num_devices=1)  # a config gsc_jax.main accepts
  if method == "mib":
    assert config.loss.kd_weight == 10.0


def test_released_program_arguments_per_step(tmp_path):
  args = arguments(tmp_path, "--epochs=3,2", "--lr=0.1,0.03")
  first = compare_reference.reference_step_arguments(args, "/data/tree", seed=1, step=0)
  later = compare_reference.reference_step_arguments(args, "/data/tree", seed=1, step=1)

  def value(arguments, flag):
    return arguments[arguments.index(flag) + 1]

  assert [value(first, flag) for flag in ("--step", "--lr", "--epochs", "--random_seed")] == [
      "0", "0.1", "3", "1"]
  assert [value(later, flag) for flag in ("--step", "--lr", "--epochs")] == ["1", "0.03", "2"]
  assert value(first, "--method") == "MiB" and "--overlap" in first
  assert value(first, "--crop_size") == "32" and value(first, "--data_root") == "/data/tree"


def test_bad_arguments_are_refused_with_what_to_do(tmp_path):
  with pytest.raises(errors.InputError, match="two values"):
    arguments(tmp_path, "--epochs=8")
  with pytest.raises(errors.InputError, match="reference and/or gsc_jax"):
    arguments(tmp_path, "--sides=torch")
  with pytest.raises(errors.InputError, match="no run.py"):
    compare_reference.parse_args(["--method=mib", f"--reference_code={tmp_path}",
                                  f"--out={tmp_path / 'out'}"])


def test_agreement_tolerance_is_twice_the_larger_spread_or_two_points():
  # Standard deviations 1.0 (reference) and 3.0 (gsc_jax): tolerance 6; means 41 and 46.
  result = compare_reference.agreement([40.0, 41.0, 42.0], [43.0, 46.0, 49.0])
  assert result["spread"] == pytest.approx(3.0)
  assert result["tolerance"] == pytest.approx(6.0)
  assert result["difference"] == pytest.approx(5.0) and result["within"]
  # Tight seeds: the 2-point floor applies, and a 2.5-point gap fails it.
  tight = compare_reference.agreement([40.0, 40.2], [42.5, 42.7])
  assert tight["tolerance"] == 2.0 and not tight["within"]
  assert compare_reference.agreement([40.0], [41.0])["spread"] == 0.0


def random_confusion(rng, size):
  """A confusion matrix with ground truth for every class."""
  return rng.integers(1, 50, size=(size, size)) + np.diag(rng.integers(100, 400, size))


def write_fake_runs(args, rng, seeds):
  """Released step results (confusion matrices) and gsc_jax metrics files per seed."""
  expected = {}
  for seed in seeds:
    for step in range(len(TASK.steps)):
      size = len(tasks.classes_seen(TASK, step))
      reference, ours = random_confusion(rng, size), random_confusion(rng, size)
      directory = os.path.join(args.out, "reference", f"seed{seed}")
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, f"step{step}.json"), "w") as file:
        json.dump({"confusion": reference.tolist(), "num_images": 10 + step}, file)
      step_dir = os.path.join(args.out, "gsc_jax", f"seed{seed}", f"step_{step}")
      os.makedirs(step_dir, exist_ok=True)
      summary = metrics.summarize_step(ours, TASK, step)
      summary["num_test_images"] = 10 + step
      with open(os.path.join(step_dir, "metrics.json"), "w") as file:
        json.dump(summary, file)

      def mean_iou(confusion):  # independent of gsc_jax.metrics
        diagonal = np.diag(confusion).astype(float)
        union = confusion.sum(0) + confusion.sum(1) - diagonal
        return 100 * np.mean(diagonal / (union + 1e-6))

      expected[(seed, step)] = (mean_iou(reference), mean_iou(ours))
  return expected


def test_comparison_scores_both_sides_alike_and_skips_unfinished_seeds(tmp_path):
  args = arguments(tmp_path, "--seeds=0,1,2")
  expected = write_fake_runs(args, np.random.default_rng(0), seeds=(0, 1))  # seed 2 unfinished
  result = compare_reference.comparison(args, TASK)
  assert result["seeds"] == [0, 1]
  for row in result["steps"]:
    step = row["step"]
    np.testing.assert_allclose(row["reference"]["all"],
                               [expected[(seed, step)][0] for seed in (0, 1)], rtol=1e-9)
    np.testing.assert_allclose(row["gsc_jax"]["all"],
                               [expected[(seed, step)][1] for seed in (0, 1)], rtol=1e-9)
    assert row["reference"]["num_test_images"] == [10 + step] * 2
    verdict = compare_reference.agreement(row["reference"]["all"], row["gsc_jax"]["all"])
    assert row["within"] == verdict["within"]
  table = compare_reference.markdown(result, args)
  first = result["steps"][0]
  assert f"| {first['difference']:+.1f} | {first['tolerance']:.1f} |" in table
  assert table.count("| gsc_jax |") == len(TASK.steps)


def test_inplace_abn_stand_in_is_batch_norm_then_its_activation():
  torch = pytest.importorskip("torch")
  reference_driver.install_inplace_abn_stand_in(torch)
  import inplace_abn  # pylint: disable=import-outside-toplevel  (the stand-in)
  torch.manual_seed(0)
  layer = inplace_abn.InPlaceABNSync(4, activation="leaky_relu", activation_param=0.01)
  batch_norm = torch.nn.BatchNorm2d(4)
  inputs = torch.randn(2, 4, 5, 5)
  expected = torch.nn.functional.leaky_relu(batch_norm(inputs), 0.01)
  torch.testing.assert_close(layer(inputs), expected)
  layer.activation = "identity"  # as the released residual blocks set it after building
  torch.testing.assert_close(layer(inputs), batch_norm(inputs))
  torch.testing.assert_close(layer.running_mean, batch_norm.running_mean)


def test_apex_stand_in_keeps_the_wrapper_prefix_and_fp32_loss():
  torch = pytest.importorskip("torch")
  reference_driver.install_apex_stand_in(torch)
  from apex import amp  # pylint: disable=import-outside-toplevel  (the stand-in)
  from apex.parallel import DistributedDataParallel  # pylint: disable=import-outside-toplevel
  model = DistributedDataParallel(torch.nn.Linear(3, 2))
  assert sorted(model.state_dict()) == ["module.bias", "module.weight"]
  loss = torch.tensor(2.5)
  with amp.scale_loss(loss, optimizer=None) as scaled:
    assert scaled is loss
  optimizer = object()
  assert amp.initialize(model, optimizer, opt_level="O1") == (model, optimizer)

"""gsc_jax.tools.performance on a small setting, and its PyTorch reference network.

No timing thresholds: the tests check that every measurement is there and is a finite,
positive number, and that the reference network mirrors the JAX model (parameter counts
of tiny, ResNet-50 and ResNet-101; output shape)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from gsc_jax import tasks
from gsc_jax.models import incremental
from gsc_jax.models import step_model
from gsc_jax.tools import performance

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

CONFIG = ("configs/synthetic.py:15-1,data.num_train_images=200,data.num_val_images=20,"
          "data.split_cache_dir=")
SMALL = performance.Setting("small", crop_size=64, batch_size=2, eval_batch_size=2)


@pytest.fixture(scope="module")
def measured():
  peak = performance.matmul_peak(size=256, repetitions=1)
  use_torch = performance.torch_available()
  result = performance.measure_setting(CONFIG, SMALL, repetitions=2,
                                       method_names=("ft",), step=1,
                                       use_torch=use_torch, peak=peak)
  return peak, result, use_torch


def _positive_finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_required_measurement_is_a_positive_number(measured):
  peak, result, use_torch = measured
  assert _positive_finite(peak["gflops"]) and peak["size"] == 256
  required = performance.REQUIRED_ROWS + (performance.TORCH_ROWS if use_torch else ())
  bad = {key: result.get(key) for key in required if not _positive_finite(result.get(key))}
  assert not bad
  assert result["crop_size"] == 64 and result["batch_size"] == 2
  assert result["consumed_images_per_second"] == pytest.approx(
      result["step_images_per_second"])
  assert result["matmul_size"] == 256
  assert result["fraction_of_peak"] == pytest.approx(
      result["achieved_gflops"] / result["matmul_gflops"])


def test_method_comparison_and_compilation_count(measured):
  _, result, _ = measured
  assert set(result["method_ms"]) == {"ft"}
  assert all(_positive_finite(value) for value in result["method_ms"].values())
  assert result["method_ratio"]["ft"] == 1.0
  assert all(_positive_finite(value) for value in result["compile_seconds_step_methods"].values())
  # The train loop must not recompile: the same shapes, dtypes and shardings every call.
  assert isinstance(result["compilations_timed"], int)
  assert result["compilations_timed"] == 0


def test_table_and_report_files(measured, tmp_path):
  peak, result, use_torch = measured
  table = performance.format_table([result])
  labels = {key: label.format(step=1) for key, label, _ in performance.ROWS}
  expected = list(performance.REQUIRED_ROWS) + ["method_ms", "method_ratio",
                                                "compilations_timed"]
  if use_torch:
    expected += list(performance.TORCH_ROWS)
  lines = table.splitlines()
  for key in expected:
    assert any(line.startswith(f"| {labels[key]} |") for line in lines), key
  assert lines[0] == "| measurement | small |"
  markdown, json_path = performance.write_report(str(tmp_path), "command", {"cpu": "x"}, peak,
                                                 [result])
  assert table in open(markdown, encoding="utf-8").read()
  saved = json.load(open(json_path, encoding="utf-8"))
  assert saved["settings"][0]["step_seconds"] == result["step_seconds"]
  assert saved["matmul"]["size"] == 256


def test_settings_change_model_crop_and_batch():
  config = performance.load_config("configs/synthetic.py:15-1", performance.SETTINGS["r101_512"])
  assert (config.model.backbone, config.data.crop_size, config.optim.batch_size) == (
      "resnet101", 512, 1)
  assert config.model.head_channels == 256 and config.data.eval_size == 512
  tiny = performance.load_config("configs/synthetic.py:15-1", performance.SETTINGS["tiny"])
  assert (tiny.model.backbone, tiny.data.crop_size, tiny.optim.batch_size) == (
      "resnet_tiny", 128, 16)
  assert performance.load_config("configs/synthetic.py:15-1", performance.SETTINGS["tiny"],
                                 "gsc").gsc.compensation is True


def _jax_parameter_count(model) -> int:
  shapes = incremental.variable_shapes(model)
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"])))


@pytest.mark.parametrize("setting", ["tiny", "r50_256", "r101_512"])
def test_torch_reference_has_the_same_parameter_count(setting):
  pytest.importorskip("torch")
  from gsc_jax.tools import torch_deeplab  # pylint: disable=import-outside-toplevel
  config = performance.load_config("configs/synthetic.py:15-1", performance.SETTINGS[setting])
  for step in (0, 1):
    sizes = tasks.step_facts(tasks.task_of(config), step).classifier_sizes
    model = step_model.make_model(config, sizes)
    network = torch_deeplab.from_config(config, sizes)
    assert torch_deeplab.parameter_count(network) == _jax_parameter_count(model)


def test_torch_reference_output_shape_and_loud_mismatch():
  torch = pytest.importorskip("torch")
  from gsc_jax.tools import torch_deeplab  # pylint: disable=import-outside-toplevel
  config = common.load_config_file("configs/synthetic.py").get_config("15-1")
  sizes = tasks.step_facts(tasks.task_of(config), 1).classifier_sizes
  model = step_model.make_model(config, sizes)
  network = torch_deeplab.from_config(config, sizes).eval()
  with torch.no_grad():
    torch_logits = network(torch.zeros(2, 3, 80, 96))
  jax_logits = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False)["logits"],
      incremental.variable_shapes(model), jax.ShapeDtypeStruct((2, 80, 96, 3), jnp.float32))
  batch, height, width, channels = jax_logits.shape
  assert tuple(torch_logits.shape) == (batch, channels, height, width) == (2, 17, 80, 96)
  # One image and a 1x1 pooled map train in JAX; the reference must too (PooledBatchNorm).
  step = torch_deeplab.make_train_step(torch_deeplab.from_config(config, sizes), config.optim,
                                       0.01)
  loss = step(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.int64))
  assert math.isfinite(float(loss))
  batch = {"image": np.zeros((1, 32, 32, 3), np.float32),
           "label": np.zeros((1, 32, 32), np.int32)}
  facts = tasks.step_facts(tasks.task_of(config), 1)
  with pytest.raises(RuntimeError, match="parameters"):
    performance.torch_reference(config, facts, batch, _jax_parameter_count(model) + 1)

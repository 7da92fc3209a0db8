"""The sharded train step over several (fake CPU) devices matches one device."""

import json
import os
import subprocess
import sys

import numpy as np

from gsc_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import jax
from configs import synthetic
from gsc_jax import main, train
assert jax.device_count() == int(sys.argv[2]), jax.devices()
config = synthetic.get_config(
    "offline,method=ft,data.num_classes=5,data.image_size=64,data.crop_size=64,"
    "data.eval_size=64,data.num_train_images=16,data.num_val_images=8,data.eval_batch_size=4,"
    "model.backbone=resnet_tiny,model.head_channels=16,optim.batch_size=8,optim.lr_step0=0.01,"
    "optim.epochs_step0=1,log_every=1")
train.train_and_evaluate(config, main.prepare(config, sys.argv[1]))
"""


def run_on_devices(workdir, num_devices):
  environment = dict(os.environ)
  environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  environment["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), str(num_devices)],
                          cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  export = checkpoint.read_export_arrays(str(workdir), 0)
  summary = checkpoint.read_json(checkpoint.metrics_path(str(workdir), 0))
  log = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  losses = [record["loss"] for record in log if "loss" in record]
  return export, summary, losses


def test_four_devices_match_one(tmp_path):
  import jax
  one_export, one_summary, one_losses = run_on_devices(tmp_path / "one", 1)
  four_export, four_summary, four_losses = run_on_devices(tmp_path / "four", 4)
  assert len(one_losses) == 2
  np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
  paths_one = jax.tree_util.tree_flatten_with_path(one_export)[0]
  paths_four = dict(jax.tree_util.tree_flatten_with_path(four_export)[0])
  moved = 0
  for path, value in paths_one:
    # Sums over 4 shards round differently from one device, and two SGD steps of a tiny
    # BN network amplify that; a per-device (unsynchronised) BN differs by far more.
    np.testing.assert_allclose(paths_four[path], value, rtol=1e-3, atol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
    moved += 1
  assert moved > 10
  # Batch statistics are global: running means moved the same way on 1 and 4 devices.
  assert not np.allclose(one_export["batch_stats"]["backbone"]["stem_bn"]["mean"], 0.0)
  assert np.isclose(one_summary["all"], four_summary["all"], atol=1e-3)

"""A work dir and a split cache in a bucket: the two-step task with ``gs://`` paths.

The bucket is served by a local Google Cloud Storage emulator (gcp-storage-emulator, in
memory, on 127.0.0.1: no network, no credentials; tests/gcs_emulator.py). The program reaches it the way it
reaches GCS on a pod: gcsfs (through etils.epath, gsc_jax/storage.py) for the files
gsc_jax writes, and TensorStore's own GCS driver for orbax's array data, each pointed at
the emulator by its documented endpoint variable. The run is stopped as if killed
(``stop_after_iterations``) and resumed, so that checkpoint restore, checksums, the log's
restart record and appends to objects all go through the bucket; it must end with exactly
the results of the same run in a local work dir (one machine: the same program on the
same data is deterministic). ``tests/path_guard.py`` records every os/os.path/open call
that a gsc_jax module makes on a ``gs://`` path during the run: there must be none.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from tests import gcs_emulator  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gsc-jax-test"
TINY = ("3-1,data.num_classes=5,data.image_size=64,data.crop_size=64,data.eval_size=64,"
        "data.num_train_images=48,data.num_val_images=16,data.eval_batch_size=8,"
        "model.backbone=resnet_tiny,model.head_channels=16,optim.batch_size=8,"
        "optim.epochs_step0=1,optim.epochs_incremental=2,log_every=2,checkpoint_every=2,"
        "method=mib")


@pytest.fixture(scope="module")
def bucket_environment():
  """The emulator (tests/gcs_emulator.py), running while the module's tests run, and the
  environment that points gcsfs, TensorStore and the test's own reads at it."""
  server, endpoint = gcs_emulator.start(BUCKET)
  environment = {**gcs_emulator.environment(endpoint), "JAX_PLATFORMS": "cpu"}
  previous = {name: os.environ.get(name) for name in environment}
  os.environ.update(environment)
  try:
    yield environment
  finally:
    server.stop()
    for name, value in previous.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def run_main(workdir, extra, compilation_cache, report=None):
  """``python -m gsc_jax.main`` on the tiny task (under the path guard when ``report``);
  the runs share a persistent compilation cache, so only the first one compiles."""
  command = [sys.executable, "-m", "gsc_jax.main", f"--config=configs/synthetic.py:{TINY}{extra}",
             f"--workdir={workdir}"]
  if report is not None:
    command = [sys.executable, "-m", "tests.path_guard", str(report), *command[1:]]
  environment = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(compilation_cache),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=environment)


def test_a_run_in_a_bucket_resumes_and_matches_a_local_run(bucket_environment, tmp_path):
  from gsc_jax import checkpoint
  from gsc_jax import reporting
  from gsc_jax import storage

  cache = tmp_path / "compilation_cache"
  local = run_main(tmp_path / "local", f",data.split_cache_dir={tmp_path / 'cache'}", cache)
  assert local.returncode == 0, local.stderr[-3000:]

  workdir = f"gs://{BUCKET}/runs/tiny"
  settings = f",data.split_cache_dir=gs://{BUCKET}/cache"
  report = tmp_path / "guard.json"
  stopped = run_main(workdir, settings + ",stop_after_iterations=7", cache, report)
  assert stopped.returncode == 3, stopped.stderr[-3000:]  # stopped as if killed
  assert json.loads(report.read_text()) == []
  resumed = run_main(workdir, settings, cache, report)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from iteration" in resumed.stdout
  assert json.loads(report.read_text()) == []  # no os/os.path/open call on a gs:// path

  for step in (0, 1):
    in_bucket = checkpoint.read_json(checkpoint.metrics_path(workdir, step))
    on_disk = checkpoint.read_json(checkpoint.metrics_path(str(tmp_path / "local"), step))
    assert in_bucket == on_disk  # the same program and data on one machine: identical
  assert (storage.read_bytes(storage.join(workdir, "results.csv"))
          == (tmp_path / "local" / "results.csv").read_bytes())
  history = [record for record in reporting.read_log(workdir) if "loss" in record]
  local_history = [record for record in reporting.read_log(str(tmp_path / "local"))
                   if "loss" in record]
  assert [(r["step"], r["iteration"], r["loss"]) for r in history] == [
      (r["step"], r["iteration"], r["loss"]) for r in local_history]
  for name in ("config.json", "summary.json", "miou.png", "step_1/predictions.png",
               "step_1/export/checksums.json"):
    assert storage.exists(storage.join(workdir, name)), name
  assert storage.list_names(storage.join(workdir, "tensorboard"))
  assert not os.path.exists(os.path.join(REPO, "gs:"))  # no local "gs:" folder either


def test_the_split_cache_in_a_bucket_is_written_and_read_back(bucket_environment, tmp_path):
  """The synthetic dataset computes its lists in memory, so the run above caches nothing:
  here a dataset with a fingerprint (tests/test_splits.py's fake VOC) caches its label scan
  and step lists in the bucket, and a second reader takes them from there."""
  from gsc_jax import storage
  from gsc_jax import tasks
  from gsc_jax.data import splits
  from tests import test_splits as split_tests

  config = split_tests._config(tmp_path)  # pylint: disable=protected-access
  with config.unlocked():
    config.data.split_cache_dir = f"gs://{BUCKET}/split_cache"
  task = tasks.get_task("voc", "15-1")
  first = splits.StepLists(config, task, split_tests.FakeSource(split_tests.TRAIN), None)
  expected = first.train(1)
  cached = storage.join(config.data.split_cache_dir, "voc", "train-0000000000000001")
  assert "label_classes.npz" in storage.list_names(cached)
  assert "train_15-1_natural_ov_step1.json" in storage.list_names(cached)
  source = split_tests.FakeSource(split_tests.TRAIN)
  again = splits.StepLists(config, task, source, None).train(1)
  assert again.tolist() == expected.tolist()
  assert source.reads == 0  # read from the bucket: no label was scanned again


def test_the_path_guard_records_a_gsc_jax_call_on_a_bucket_path(tmp_path):
  """The guard of the run above can fail: an os.path call on a gs:// path from a gsc_jax
  module is recorded, the same call from another module or on a local path is not."""
  report = tmp_path / "guard.json"
  probe = ("import os\n"
           "from tests import path_guard\n"
           f"path_guard.install({str(report)!r})\n"
           "code = 'os.path.exists(\"gs://b/x\"); os.path.exists(\"/tmp\")'\n"
           "exec(code, {'__name__': 'gsc_jax.probe', 'os': os})\n"
           "exec(code, {'__name__': 'elsewhere', 'os': os})\n")
  result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  calls = json.loads(report.read_text())
  assert [(call["function"], call["module"]) for call in calls] == [
      ("os.path.exists", "gsc_jax.probe")]

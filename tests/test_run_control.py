"""What keeps a run trustworthy: every config value checked before compute, a diverging
run stopped without saving its model, a signal turned into a clean checkpoint, and one run
per work dir."""

import os
import signal
import subprocess
import sys

import jax.numpy as jnp
import pytest

from configs import synthetic
from gsc_jax import checkpoint
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import train
from gsc_jax import validation
from gsc_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("3-1,data.num_classes=5,data.image_size=32,data.crop_size=32,data.eval_size=32,"
        "data.num_train_images=48,data.num_val_images=8,data.eval_batch_size=8,"
        "model.backbone=resnet_tiny,model.head_channels=8,optim.batch_size=8,"
        "optim.epochs_step0=2,optim.epochs_incremental=1,log_every=1,checkpoint_every=4")


def _validated(argument: str, num_devices: int = 1):
  config = synthetic.get_config(argument)
  methods.resolve_preset(config)
  validation.validate(config, num_devices)
  return config


@pytest.mark.parametrize("argument, message", [
    ("15-1,gsc.groups=steps", r"gsc.groups='steps' must be one of: fiss, step, old_new, class"),
    ("15-1,method=gsc,gsc.magnitude=soft", r"gsc.magnitude='soft' must be one of"),
    ("15-1,data.crop_size=0", r"data.crop_size=0 must be >= 1"),
    ("15-1,optim.lr_step0=-0.1", r"optim.lr_step0=-0.1 must be > 0.0"),
    ("15-1,optim.momentum=1.0", r"optim.momentum=1.0 must be < 1.0"),
    ("15-1,model.backbone=resnet7", r"model.backbone='resnet7' must be one of: resnet101"),
    ("15-1,data.crop_scale_min=3.0", r"data.crop_scale_min=3.0 is above data.crop_scale_max"),
    ("15-1,method=gsc,pseudo.quantile_start=0.9",
     r"pseudo.quantile_start=0.9 is above pseudo.quantile_max=0.8"),
    ("15-1,method=gsc,gsc.relabel=both", r"gsc.relabel='both' must be one of"),
    ("15-1,data.eval_unseen=zero", r"data.eval_unseen='zero' must be one of: ignore, background"),
    ("15-2", r"task '15-2'"),
    # A method switch the chosen method does not read.
    ("15-1,method=mib,gsc.compensation=true", r"method mib does not use gsc.compensation"),
    ("15-1,method=ft,loss.kd_weight=10", r"method ft does not use loss.kd_weight"),
    ("15-1,method=plop,loss.ce=unbiased", r"method plop does not use loss.ce"),
])
def test_invalid_values_are_refused_naming_the_field(argument, message):
  with pytest.raises(errors.InputError, match=message):
    _validated(argument)


def test_batch_must_split_over_the_devices():
  _validated("15-1,optim.batch_size=12,data.eval_batch_size=12", num_devices=3)
  with pytest.raises(errors.InputError, match="optim.batch_size=16 must be divisible by the 3"):
    _validated("15-1", num_devices=3)


def test_wrong_type_in_the_argument_names_the_field():
  with pytest.raises(errors.InputError, match="optim.batch_size='eight'.*int"):
    synthetic.get_config("15-1,optim.batch_size=eight")


def test_neutral_switches_are_accepted():
  config = _validated("15-1,method=mib,gsc.compensation=false,loss.pod_weight=0.0")
  assert config.loss.kd_weight == 10.0 and not config.gsc.compensation


def test_a_list_field_is_checked_element_by_element():
  config = synthetic.get_config("15-1")
  methods.resolve_preset(config)
  config.loss.pod_scales = (1, 0)
  with pytest.raises(errors.InputError, match=r"loss.pod_scales=\(1, 0\) must be a non-empty"):
    validation.validate(config, 1)


def _run(workdir, extra=""):
  config = synthetic.get_config(TINY + extra)
  return train.train_and_evaluate(config, workdir_lib.prepare(config, str(workdir)))


def test_a_step_smaller_than_one_batch_is_refused_before_step_0_trains(tmp_path):
  """48 images over 5 classes: class 4 (step 1) is in fewer than 40 of them, so step 1
  has fewer images than a batch of 40; the run refuses before any step trains."""
  with pytest.raises(errors.InputError,
                     match=r"step 1 has \d+ training images, fewer than one global batch "
                           r"\(optim.batch_size=40\)"):
    _run(tmp_path, ",optim.batch_size=40")
  assert not os.path.exists(checkpoint.step_dir(str(tmp_path), 0))


@pytest.mark.parametrize("make, hint", [
    (lambda: synthetic.get_config("15-1,gsc.tua=2"), r"did you mean gsc.tau\?"),
    (lambda: _validated("15-1,gsc.groups=clas"), r"did you mean class\?"),
    (lambda: _validated("15-1,method=mibb"), r"did you mean mib\?"),
    (lambda: _validated("15_1"), r"did you mean 15-1\?"),
])
def test_unknown_names_get_the_closest_valid_ones(make, hint):
  with pytest.raises(errors.InputError, match=hint):
    make()


def test_an_unknown_key_lists_the_keys_of_its_section_only():
  with pytest.raises(errors.InputError) as raised:
    synthetic.get_config("15-1,optim.bachsize=2")
  message = str(raised.value)
  assert "did you mean optim.batch_size?" in message
  assert "the keys of optim: accumulation_steps, batch_size," in message
  assert "gsc.tau" not in message and "data.root" not in message


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                             monkeypatch):
  """Iteration 5 of step 0 sees a NaN image: the run stops naming step 0, iteration 5 and
  the loss, keeps the checkpoint of iteration 4 and writes no export or metrics; without
  the NaN the same command resumes from iteration 4 and finishes."""
  make_train_step = train.train_step_lib.make_train_step

  def poisoned_make_train_step(*args):
    step = make_train_step(*args)

    def poisoned_step(state, frozen, batch):
      nan_at_five = jnp.where(state["iteration"] == 4, jnp.nan, 0.0)
      return step(state, frozen, {**batch, "image": batch["image"] + nan_at_five})

    return poisoned_step

  monkeypatch.setattr(train.train_step_lib, "make_train_step", poisoned_make_train_step)
  with pytest.raises(errors.RunDiverged, match=r"step 0 iteration 5: non-finite .*loss"):
    _run(tmp_path)
  assert checkpoint.train_manager(str(tmp_path), 0).latest_step() == 4
  assert not checkpoint.export_exists(str(tmp_path), 0)
  assert not os.path.exists(checkpoint.metrics_path(str(tmp_path), 0))
  assert not os.path.exists(tmp_path / "results.csv")
  monkeypatch.setattr(train.train_step_lib, "make_train_step", make_train_step)
  summaries = _run(tmp_path, ",last_step=0")
  assert summaries[0]["step"] == 0 and checkpoint.export_exists(str(tmp_path), 0)


def _main(workdir, *extra, **kwargs):
  environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
      [sys.executable, "-m", "gsc_jax.main", f"--config=configs/synthetic.py:{TINY}",
       f"--workdir={workdir}", *extra], cwd=REPO, env=environment, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
  process = _main(tmp_path, "--config.optim.epochs_step0=40", "--config.last_step=0")
  for line in process.stdout:  # wait until training runs
    if line.startswith("step 0 it 3/"):
      process.send_signal(signal.SIGTERM)
      break
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 3, stderr[-2000:]
  assert "SIGTERM: stopped at step 0 iteration" in stderr
  assert "run the same command again to resume" in stderr
  saved = checkpoint.train_manager(str(tmp_path), 0).latest_step()
  assert saved is not None and saved >= 3
  assert not checkpoint.export_exists(str(tmp_path), 0)
  resumed = _main(tmp_path, "--config.optim.epochs_step0=40", "--config.last_step=0",
                  "--config.stop_after_iterations=1")
  stdout, stderr = resumed.communicate(timeout=300)
  assert f"step 0: resumed from iteration {saved}" in stdout, stderr[-2000:]


@pytest.mark.slow
def test_bad_input_is_one_line_and_other_errors_keep_their_traceback(tmp_path):
  bad_inputs = [
      (("--config.gsc.groups=steps",), "error: invalid config: gsc.groups='steps'"),
      (("--config=configs/synthetic.py:15-1,optim.batch_size=eight",),
       "error: config key optim.batch_size='eight'"),
      (("--config=configs/nope.py:15-1",), "error: cannot read the --config file"),
  ]
  for arguments, first_words in bad_inputs:
    bad = _main(tmp_path / "bad", *arguments)
    _, stderr = bad.communicate(timeout=300)
    assert bad.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(first_words), stderr[-2000:]
  script = ("import sys; from absl import app; from gsc_jax import main;"
            "main.train.train_and_evaluate = lambda *arguments: 1 / 0;"
            f"sys.argv = ['main', '--config=configs/synthetic.py:{TINY}', "
            f"'--workdir={tmp_path / 'bug'}'];"
            "app.run(main.main, flags_parser=main.parse_flags)")
  bug = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert bug.returncode == 1
  assert "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


def test_a_work_dir_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    with open(tmp_path / workdir_lib.LOCK_FILE, "w") as f:
      f.write(f'{{"pid": {holder.pid}, "host": "{os.uname().nodename}", "since": 0}}')
    with pytest.raises(errors.InputError, match=f"in use by process {holder.pid}"):
      with workdir_lib.lock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  notes = []
  with workdir_lib.lock(str(tmp_path), notes.append):  # the holder is gone: taken over
    assert os.path.exists(tmp_path / workdir_lib.LOCK_FILE)
  assert notes and "stale lock" in notes[0]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_FILE)  # released at the end

"""Settings refused before any compute, each with one line naming the field: invalid
numbers, options the chosen method never reads, bad keys and types on the command line, and
a duplicated line in a list file."""

import os
import subprocess
import sys

import pytest

from configs import synthetic
from configs import synthetic_benchmark
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import validation
from gsc_jax import workdir as workdir_lib
from gsc_jax.data import voc
from tests import dataset_trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refusal(argument: str, workdir) -> str:
  """The message with which ``workdir_lib.prepare`` refuses ``synthetic.py:<argument>``;
  fails if it accepts it or leaves anything in ``workdir``."""
  with pytest.raises(errors.InputError) as refused:
    workdir_lib.prepare(synthetic.get_config(argument), str(workdir))
  assert not os.path.exists(workdir)  # refused before anything was written
  message = str(refused.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("argument, message", [
    ("15-1,optim.lr_step0=-1", "optim.lr_step0=-1.0 must be > 0.0"),
    ("15-1,optim.lr_step0=0", "optim.lr_step0=0.0 must be > 0.0"),
    ("15-1,optim.lr_incremental=0", "optim.lr_incremental=0.0 must be > 0.0"),
    ("15-1,optim.epochs_step0=0", "optim.epochs_step0=0 must be >= 1"),
    ("15-1,optim.epochs_incremental=0", "optim.epochs_incremental=0 must be >= 1"),
    ("15-1,optim.batch_size=0", "optim.batch_size=0 must be >= 1"),
    ("15-1,data.eval_batch_size=0", "data.eval_batch_size=0 must be >= 1"),
    ("15-1,log_every=0", "log_every=0 must be >= 1"),
    ("15-1,checkpoint_every=0", "checkpoint_every=0 must be >= 1"),
    ("15-1,stop_after_iterations=0", "stop_after_iterations=0 must be -1 (off) or an integer >= 1"),
    ("15-1,seed=-1", "seed=-1 must be >= 0"),
    ("15-1,data.dataset_seed=-3", "data.dataset_seed=-3 must be >= 0"),
])
def test_an_invalid_number_is_refused_naming_the_field(tmp_path, argument, message):
  assert _refusal(argument, tmp_path / "run") == f"invalid config: {message}"


@pytest.mark.parametrize("argument, message", [
    ("15-1,method=ft,gsc.tau=2.0",
     "gsc.tau=2.0 is not read by method ft (only by gsc); remove it or use method=gsc"),
    ("15-1,method=ft,gsc.groups=class", "gsc.groups='class' is not read by method ft"),
    ("15-1,method=mib,pseudo.quantile_start=0.3",
     "pseudo.quantile_start=0.3 is not read by method mib (only by gsc and plop)"),
    ("15-1,method=mib,loss.pod_scales=[2]", "loss.pod_scales=(2,) is not read by method mib"),
    ("15-1,method=plop,loss.kd_alpha=2", "loss.kd_alpha=2.0 is not read by method plop "
                                         "(only by mib)"),
    ("15-1,method=gsc,gsc.compensation=false,gsc.groups=class",
     "gsc.groups='class' is only read with gsc.compensation=true"),
    ("15-1,method=mib,loss.kd_weight=0,loss.kd_alpha=2",
     "loss.kd_alpha=2.0 is only read with loss.kd_weight>0"),
    ("15-1,method=gsc,gsc.theta=0.7",
     "gsc.theta=0.7 is only read with gsc.relabel=first, not gsc.relabel=filter_then_relabel"),
    ("15-1,method=gsc,gsc.relation_form=temperature,gsc.sharpening_weight=1",
     "gsc.sharpening_weight=1.0 is only read with gsc.relation_form=soft_sharp"),
])
def test_an_option_the_method_never_reads_is_refused(tmp_path, argument, message):
  assert _refusal(argument, tmp_path / "run").startswith(f"invalid config: {message}")


def test_presets_and_options_the_method_reads_are_accepted(tmp_path):
  """The preset's own values (placeholders it fills) are not the user's settings."""
  for argument in ("15-1,method=ft", "15-1,method=mib", "15-1,method=plop", "15-1,method=gsc",
                   "15-1,method=plop,pseudo.thresholds=median,loss.pod_scales=[2]",
                   "15-1,method=gsc,gsc.prototypes=false,gsc.groups=class,gsc.bound=true",
                   "15-1,method=mib,loss.kd_alpha=2,gsc.compensation=false"):
    workdir_lib.prepare(synthetic.get_config(argument), str(tmp_path / argument))


def test_every_benchmark_run_is_accepted():
  for task, rows in synthetic_benchmark.RUNS.items():
    for _, overrides in rows:
      config = synthetic_benchmark.get_config(f"{task},{overrides}")
      set_options = methods.options_set(config)
      methods.resolve_preset(config)
      validation.validate(config, 1, set_options)


def _main(tmp_path, *arguments):
  """``python -m gsc_jax.main`` on the synthetic 15-1 with ``arguments``; a run that is
  wrongly accepted stops after one iteration (exit code 3)."""
  return subprocess.run(
      [sys.executable, "-m", "gsc_jax.main", f"--workdir={tmp_path / 'run'}", *arguments,
       "--config.stop_after_iterations=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
@pytest.mark.parametrize("arguments, line", [
    (("--config=configs/synthetic.py:15-1,optim.lr_step0=-1",),
     "error: invalid config: optim.lr_step0=-1.0 must be > 0.0"),
    (("--config=configs/synthetic.py:15-1,optim.bachsize=4",),
     "error: unknown config key 'optim.bachsize'; did you mean optim.batch_size? the keys "
     "of optim: accumulation_steps,"),
    (("--config=configs/synthetic.py:15-1,data.num_classes=2.5",),
     "error: config key data.num_classes='2.5' is not an integer"),
    (("--config=configs/synthetic.py:15-1,method=ft,gsc.tau=2.0",),
     "error: invalid config: gsc.tau=2.0 is not read by method ft"),
    (("--config=configs/synthetic.py:15-1", "--config.optim.bachsize=4"),
     "error: unknown config key 'optim.bachsize'; did you mean optim.batch_size? the keys "
     "of optim: accumulation_steps,"),
    (("--config=configs/synthetic.py:15_1",),
     "error: unknown task '15_1' for dataset 'synthetic'; did you mean 15-1?"),
])
def test_bad_command_line_settings_are_one_line_with_exit_code_2(tmp_path, arguments, line):
  result = _main(tmp_path, *arguments)
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
  assert result.stderr.startswith(line), result.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("duplicate", ["2007_000002\n", "/JPEGImages/2007_000002.jpg "
                                                        "/SegmentationClassAug/2007_000002.png\n"])
def test_a_duplicated_list_line_is_refused_naming_the_line(tmp_path, duplicate):
  root = tmp_path / "voc"
  dataset_trees.write_voc_tree(root, [[1], [2], [3]], [[1]])
  list_path = root / "ImageSets" / "Segmentation" / "train_aug.txt"
  with open(list_path, "a") as list_file:
    list_file.write(duplicate)
  with pytest.raises(errors.InputError) as refused:
    voc.VOCSegmentation(str(root), "train_aug")
  assert str(refused.value) == (
      f"{list_path}:4: id '2007_000002' is listed again (first on line 2); remove the "
      "duplicated line")


def test_help_names_the_methods_the_tasks_and_where_the_fields_are():
  result = subprocess.run([sys.executable, "-m", "gsc_jax.main", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1 and not result.stderr, result.stderr[-2000:]  # absl's --help
  text = result.stdout
  for method in ("ft", "mib", "plop", "gsc"):
    assert f"\n  {method} " in text
  assert "configs/voc.py" in text and "15-1" in text and "100-50" in text and "11-5" in text
  assert "configs/common.py" in text and "--compilation_cache" in text
  assert "--show_config" in text

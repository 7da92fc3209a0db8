"""Config strings, overrides, presets and their errors."""

import json

import pytest

from configs import common
from configs import synthetic
from configs import voc
from gsc_jax import methods
from gsc_jax import workdir as workdir_lib


def test_parse_arg():
  assert common.parse_arg("15-1") == ("15-1", {})
  assert common.parse_arg("15-1,method=ft, seed=3") == ("15-1", {"method": "ft", "seed": "3"})
  with pytest.raises(ValueError, match="must start with a task name"):
    common.parse_arg("method=ft")
  with pytest.raises(ValueError, match="key=value"):
    common.parse_arg("15-1,ft")


def test_overrides_keep_types():
  config = voc.get_config("15-1,overlap=false,seed=1,optim.batch_size=8,loss.kd_weight=100")
  assert config.task == "15-1"
  assert config.overlap is False
  assert config.seed == 1
  assert config.optim.batch_size == 8
  assert config.loss.kd_weight == 100.0


def test_published_protocol_fields():
  config = voc.get_config("15-1")
  optim = config.optim
  assert (optim.batch_size, optim.lr_step0, optim.lr_incremental) == (24, 0.01, 0.001)
  assert (optim.momentum, optim.nesterov, optim.weight_decay, optim.poly_power) == (
      0.9, True, 1e-4, 0.9)
  methods.resolve_preset(config)
  assert (optim.epochs_step0, optim.epochs_incremental) == (30, 30)
  assert config.data.crop_size == 512 and config.model.backbone == "resnet101"


def test_unknown_key_lists_valid_keys():
  with pytest.raises(ValueError, match=r"unknown config key 'optim.bachsize'.*optim.batch_size"):
    synthetic.get_config("15-1,optim.bachsize=4")


def test_bad_boolean():
  with pytest.raises(ValueError, match="not a boolean"):
    synthetic.get_config("15-1,overlap=maybe")


def test_preset_fills_only_unset_fields():
  config = synthetic.get_config("15-1,method=mib,loss.kd_weight=3.5")
  filled = methods.resolve_preset(config)
  assert config.loss.kd_weight == 3.5  # the user's value wins
  assert config.loss.ce == "unbiased"
  assert config.data.void_to_background is True
  assert "loss.kd_weight=10.0" not in filled and "loss.ce=unbiased" in filled


def test_ft_preset():
  config = synthetic.get_config("15-1,method=ft")
  methods.resolve_preset(config)
  assert (config.loss.ce, config.loss.kd_weight, config.model.new_classifier_init) == (
      "plain", 0.0, "random")


def test_plop_and_gsc_presets_and_switching_one_gsc_part_off():
  plop = synthetic.get_config("15-1,method=plop")
  methods.resolve_preset(plop)
  assert (plop.loss.ce, plop.loss.pod_weight, plop.loss.pod_logits_weight) == ("plain", 0.01, 0.0005)
  assert plop.pseudo.entropy and plop.model.new_classifier_init == "mib"
  assert not (plop.gsc.compensation or plop.gsc.relation or plop.gsc.prototypes)
  gsc = synthetic.get_config("15-1,method=gsc,gsc.prototypes=false")
  methods.resolve_preset(gsc)
  assert gsc.gsc.compensation and gsc.gsc.relation and gsc.gsc.prototypes is False
  assert gsc.pseudo.entropy and gsc.loss.pod_weight == 0.01
  mib = synthetic.get_config("15-1,method=mib")
  methods.resolve_preset(mib)
  assert mib.loss.pod_weight == 0.0 and not mib.pseudo.entropy and not mib.gsc.compensation


def test_unknown_gsc_key_lists_valid_keys():
  with pytest.raises(ValueError, match=r"unknown config key 'gsc.theeta'.*gsc.theta"):
    synthetic.get_config("15-1,gsc.theeta=0.3")


def test_unknown_method():
  config = synthetic.get_config("15-1,method=magic")
  with pytest.raises(ValueError, match="valid methods: ft, gsc, mib, plop"):
    methods.resolve_preset(config)


def test_unknown_task_lists_valid_tasks(tmp_path):
  config = voc.get_config("15-2")
  with pytest.raises(ValueError, match="15-1"):
    workdir_lib.prepare(config, str(tmp_path / "run"))


def test_prepare_saves_resolved_config_and_refuses_other_settings(tmp_path):
  workdir = str(tmp_path / "run")
  workdir_lib.prepare(synthetic.get_config("15-1,method=ft"), workdir)
  saved = json.load(open(tmp_path / "run" / "config.json"))
  assert saved["loss"]["ce"] == "plain" and saved["workdir"] == workdir
  workdir_lib.prepare(synthetic.get_config("15-1,method=ft,last_step=2"), workdir)  # restartable
  with pytest.raises(ValueError, match="different config"):
    workdir_lib.prepare(synthetic.get_config("15-1,method=ft,seed=5"), workdir)


def test_a_field_added_later_counts_as_its_default_in_an_older_work_dir(tmp_path):
  """A config.json written before optim.accumulation_steps existed resumes with the
  default, and is refused with another value."""
  workdir = str(tmp_path / "run")
  workdir_lib.prepare(synthetic.get_config("15-1,method=ft"), workdir)
  path = tmp_path / "run" / "config.json"
  older = json.loads(path.read_text())
  del older["optim"]["accumulation_steps"]
  path.write_text(json.dumps(older))
  workdir_lib.prepare(synthetic.get_config("15-1,method=ft"), workdir)
  path.write_text(json.dumps(older))
  with pytest.raises(ValueError, match="optim.accumulation_steps: None -> 2"):
    workdir_lib.prepare(synthetic.get_config("15-1,method=ft,optim.accumulation_steps=2"),
                        workdir)


def test_a_bad_value_names_the_type_the_field_takes():
  with pytest.raises(ValueError, match=r"^config key seed='1.5' is not an integer$"):
    synthetic.get_config("15-1,seed=1.5")
  with pytest.raises(ValueError, match=r"loss.pod_scales='2' is not a list such as \[2\].*"
                                       r"--config.loss.pod_scales='\(1,2,4\)'"):
    synthetic.get_config("15-1,loss.pod_scales=2")


def test_options_set_are_the_user_settings_not_the_preset():
  config = synthetic.get_config("15-1,method=gsc,gsc.tau=2.0,gsc.groups=fiss")
  assert methods.options_set(config) == {"gsc.tau": 2.0}  # fiss is the default
  methods.resolve_preset(config)  # fills pseudo.quantile_* from the preset
  assert methods.options_set(config).keys() == {"gsc.tau", "pseudo.quantile_start",
                                                "pseudo.quantile_per_epoch",
                                                "pseudo.quantile_max"}

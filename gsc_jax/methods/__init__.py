"""Methods: one module each (ft, mib, plop, gsc), found by name.

A method module defines

- ``PRESET``: the config fields the method reads, with its default values. A preset only
  fills fields the user left unset (``None``); a value set in the config file, in the
  ``,key=value`` argument or with ``--config.x=y`` always wins. So
  ``method=gsc,gsc.prototypes=false`` is GSC without its prototypical re-labelling.
- ``PUBLISHED``: values the authors published for particular ``(dataset, task)`` runs
  (``"*"`` matches any task), applied like the preset.
- ``build(config, facts, model, teacher_model) -> base.Method``: the method's pure
  functions for one step t > 0 (``facts``: ``tasks.StepFacts``).

Adding a method is adding one such module: ``method=<module name>`` then selects it. Step 0
is the same for every method (the plain cross-entropy on the step's labels; see
``build``), so one step 0 can be shared by several methods' runs (``init_step0_from``).

The method switches (``SWITCHES``) belong to the methods whose ``PRESET`` names them: a
switch set to something other than its neutral value for a method that does not read it
is an error, never silently ignored. So is an option of a switch (``OPTION_SWITCHES``, e.g.
``gsc.tau``) set away from its default where it is never read: for a method without the
switch, or with the switch off (``unread_options``).
"""

import importlib
import pkgutil

from configs import common as config_common
from gsc_jax import errors
from gsc_jax import tasks
from gsc_jax.methods import base
from gsc_jax.methods import gsc  # its prototype pass ends every step 0

# Fields with the value every method takes unless its preset says otherwise (the threshold
# quantiles are only read where pseudo.entropy is on).
COMMON = {"model.new_classifier_init": "mib", "data.void_to_background": False,
          "pseudo.quantile_start": 0.5, "pseudo.quantile_per_epoch": 0.0,
          "pseudo.quantile_max": 0.5}
# Every method switch with its neutral value (the value that adds nothing).
SWITCHES = {
    "loss.ce": "plain",
    "loss.kd_weight": 0.0,
    "loss.pod_weight": 0.0,
    "loss.pod_logits_weight": 0.0,
    "pseudo.entropy": False,
    "gsc.compensation": False,
    "gsc.relation": False,
    "gsc.prototypes": False,
}
# Every switch option with the switches that make it read: only the methods whose PRESET
# names one of them read it, and only while one of them is on. An option set away from its
# base default (configs/common.py) where it is never read is an error.
_OPTIONS_OF_SWITCHES = {
    ("loss.kd_weight",): ("loss.kd_alpha",),
    ("loss.pod_weight", "loss.pod_logits_weight"): ("loss.pod_scales",),
    ("pseudo.entropy",): ("pseudo.thresholds", "pseudo.threshold_floor",
                          "pseudo.quantile_start", "pseudo.quantile_per_epoch",
                          "pseudo.quantile_max"),
    # nu weights the pseudo-labels of PLOP's entropy rule and of GSC's re-labelling alike.
    ("pseudo.entropy", "gsc.prototypes"): ("pseudo.adaptive_factor",),
    ("gsc.compensation",): ("gsc.groups", "gsc.magnitude", "gsc.use_exponent", "gsc.bound",
                            "gsc.ema_decay"),
    ("gsc.relation",): ("gsc.relation_form", "gsc.soft_label_form", "gsc.soft_label_weight",
                        "gsc.sharpening_weight", "gsc.class_relation",
                        "gsc.class_relation_weight", "gsc.temperature_kd_weight",
                        "gsc.soft_temperature", "gsc.sharp_temperature"),
    ("gsc.prototypes",): ("gsc.prototype_source", "gsc.similarity", "gsc.tau", "gsc.relabel",
                          "gsc.theta"),
}
OPTION_SWITCHES = {option: switches for switches, options in _OPTIONS_OF_SWITCHES.items()
                   for option in options}
# Options read only when another field has one of some values (gsc.py's relation terms and
# re-labelling rules).
_SOFT_SHARP = ("gsc.relation_form", ("soft_sharp",))
_TEMPERATURE = ("gsc.relation_form", ("temperature",))
OPTION_CONDITIONS = {
    "gsc.soft_label_form": _SOFT_SHARP, "gsc.soft_label_weight": _SOFT_SHARP,
    "gsc.sharpening_weight": _SOFT_SHARP, "gsc.class_relation": _SOFT_SHARP,
    "gsc.class_relation_weight": ("gsc.class_relation", ("fiss", "first")),
    "gsc.temperature_kd_weight": _TEMPERATURE, "gsc.soft_temperature": _TEMPERATURE,
    "gsc.sharp_temperature": _TEMPERATURE,
    "gsc.theta": ("gsc.relabel", ("first",)),
}
# Parts that act on old classes hidden in the background, or on groups of classes added
# by a step: a domain-incremental task (Cityscapes) has neither, as every step labels every
# class. Their presets are off there, and switching one on is an error.
NOT_FOR_DOMAIN_TASKS = ("pseudo.entropy", "gsc.compensation", "gsc.prototypes")
_NOT_METHODS = ("base",)


def names() -> list[str]:
  """Every method: the modules of this package."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__)
                if info.name not in _NOT_METHODS and not info.name.startswith("_"))


def module_of(name: str):
  if name not in names():
    raise errors.InputError(f"unknown method {name!r}; {errors.did_you_mean(name, names())}"
                            f"valid methods: {', '.join(names())}")
  return importlib.import_module(f"{__name__}.{name}")


def field(config, path: str):
  """The value of the config field ``path`` ("section.name" or "name")."""
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _set(config, path: str, value) -> None:
  section, name = path.split(".")
  config[section][name] = value


def _reading_methods(switches) -> list[str]:
  """The methods whose preset names one of ``switches``."""
  return [name for name in names() if any(path in module_of(name).PRESET for path in switches)]


def _switched_on_condition(switches) -> str:
  """``gsc.relation=true`` / ``loss.kd_weight>0``, joined by ``or``."""
  return " or ".join(f"{path}=true" if isinstance(SWITCHES[path], bool) else f"{path}>0"
                     for path in switches)


def options_set(config) -> dict:
  """The switch options (``OPTION_SWITCHES``) whose value differs from the base config's
  (configs/common.py ``get_base_config``): what the user set. Call it before
  ``resolve_preset``, which fills the unset ones."""
  defaults = config_common.get_base_config(config.dataset, config.task)
  return {option: field(config, option) for option in OPTION_SWITCHES
          if field(config, option) not in (None, field(defaults, option))}


def unread_options(config, set_options: dict) -> list[str]:
  """One line per option of ``set_options`` (``options_set``) that ``config.method`` never
  reads once its preset is resolved: the method's preset names none of the option's
  switches, every one of them is off, or the field that selects it (``OPTION_CONDITIONS``)
  selects something else."""
  module = module_of(config.method)
  problems = []
  for option, value in set_options.items():
    switches = OPTION_SWITCHES[option]
    if not any(path in module.PRESET for path in switches):
      readers = _reading_methods(switches)
      problems.append(f"{option}={value!r} is not read by method {config.method} (only by "
                      f"{' and '.join(readers)}); remove it or use "
                      + (f"method={readers[0]}" if len(readers) == 1 else "one of those"))
    elif all(field(config, path) in (None, SWITCHES[path]) for path in switches):
      problems.append(f"{option}={value!r} is only read with "
                      f"{_switched_on_condition(switches)}; remove it or switch that on")
    elif option in OPTION_CONDITIONS:
      path, values = OPTION_CONDITIONS[option]
      if field(config, path) not in values:
        problems.append(f"{option}={value!r} is only read with "
                        f"{' or '.join(f'{path}={v}' for v in values)}, not "
                        f"{path}={field(config, path)}; remove it or set {path}")
  return problems


def resolve_preset(config) -> list[str]:
  """Fills the unset (None) fields from ``config.method``'s preset, its published
  per-task values and the neutral values of the switches it does not read; returns what
  it filled. ``optim.epochs_incremental`` left unset means the published per-task value,
  otherwise ``optim.epochs_step0``.
  """
  module = module_of(config.method)
  foreign = [path for path, neutral in SWITCHES.items()
             if path not in module.PRESET and field(config, path) not in (None, neutral)]
  if foreign:
    raise errors.InputError(
        f"method {config.method} does not use {', '.join(foreign)} (it reads "
        f"{', '.join(sorted(module.PRESET)) or 'no method switch'}); remove "
        f"{'it' if len(foreign) == 1 else 'them'} or choose a method that uses "
        f"{'it' if len(foreign) == 1 else 'them'}")
  values = {**COMMON, **SWITCHES, **module.PRESET}
  for task in ("*", config.task):
    values.update(module.PUBLISHED.get((config.dataset, task), {}))
  domain_task = config.dataset in tasks.DOMAIN_INCREMENTAL_DATASETS
  if domain_task:
    values.update({path: False for path in NOT_FOR_DOMAIN_TASKS})
  values.setdefault("optim.epochs_incremental", config.optim.epochs_step0)
  filled = []
  for path, value in values.items():
    if field(config, path) is None:
      _set(config, path, value)
      filled.append(f"{path}={value}")
  switched_on = [path for path in NOT_FOR_DOMAIN_TASKS if field(config, path)]
  if domain_task and switched_on:
    raise errors.InputError(
        f"{', '.join(switched_on)} cannot be used on the domain-incremental task "
        f"{config.dataset} {config.task}: every step labels every class, so there are no "
        "old classes hidden in the background and no step groups of classes; set them "
        "to false")
  return filled


def build(config, facts, model, teacher_model) -> base.Method:
  """The method of ``config.method`` at the step described by ``facts``.

  Step 0 has no teacher and is the same for every method: the plain cross-entropy on the
  step's labels. Its prototypes are always saved, so that a GSC run can start from any
  method's step 0.
  """
  if not facts.has_teacher:
    return base.Method(after_step=(gsc.prototype_pass(
        facts, model, None, base.images_labels_as_targets)._replace(
            purpose="per-class mean features, saved so that a GSC run with "
                    "gsc.prototype_source=previous_model can start from this step 0"),))
  return module_of(config.method).build(config, facts, model, teacher_model)

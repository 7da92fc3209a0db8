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
is an error, never silently ignored.
"""

import importlib
import pkgutil

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
    raise errors.InputError(f"unknown method {name!r}; valid methods: {', '.join(names())}")
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
        facts, model, None, base.images_labels_as_targets),))
  return module_of(config.method).build(config, facts, model, teacher_model)

"""Methods: one module each (ft, mib, plop, gsc), found by name.

A method module defines

- ``PRESET``: the switches the method reads (``SWITCHES`` of any method module) and other
  config values, with the method's defaults. A preset only fills fields the user left unset
  (``None``); a value set in the config file, in the ``,key=value`` argument or with
  ``--config.x=y`` always wins. So ``method=gsc,gsc.prototypes=false`` is GSC without its
  prototypical re-labelling.
- ``PUBLISHED``: values the authors published for particular ``(dataset, task)`` runs
  (``"*"`` matches any task), applied like the preset.
- ``build(config, facts, model, teacher_model) -> base.Method``: the method's pure
  functions for one step t > 0 (``facts``: ``tasks.StepFacts``).

and, when it brings config fields of its own (each field is declared by one module, with
its default, its rule (gsc_jax/rules.py) and a one-line doc; ``add_fields`` puts them into
every config):

- ``SWITCHES``: ``{path: base.Switch}``, the fields that turn its parts on. A switch set
  away from its neutral value for a method whose preset does not name it is an error,
  never silently ignored.
- ``OPTIONS``: ``{path: base.Option}``, the fields its parts read while their switches are
  on. One set away from its default where it is never read is an error
  (``unread_options``). ``ALSO_READ_WITH``: ``{option of another module: switches of this
  one that make it read too}``.
- ``config_problems(config) -> list[str]``: rules between its fields.
- ``passes_after_step0(facts, model) -> tuple[base.DataPass, ...]``: passes that every
  step 0 runs, whichever the method, so that this method can start from any method's
  step 0.

Adding a method is adding one such module: ``method=<module name>`` then selects it. Step 0
is the same for every method (the plain cross-entropy on the step's labels; see
``build``), so one step 0 can be shared by several methods' runs (``init_step0_from``).
"""

import dataclasses
import functools
import importlib
import pkgutil

from ml_collections import config_dict

from gsc_jax import errors
from gsc_jax import tasks
from gsc_jax.methods import base

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


def _modules_with(attribute: str) -> list:
  """``(name, module)`` of every method module that defines ``attribute``."""
  return [(name, module_of(name)) for name in names() if hasattr(module_of(name), attribute)]


def _declared(attribute: str) -> dict:
  """``{path: declaration}`` of every method module's ``attribute`` (SWITCHES or OPTIONS);
  a path declared twice is a programming error."""
  declared, owners = {}, {}
  for name, module in _modules_with(attribute):
    for path, declaration in getattr(module, attribute).items():
      if path in owners:
        raise ValueError(f"config field {path} is declared by both methods/{owners[path]}.py "
                         f"and methods/{name}.py")
      declared[path], owners[path] = declaration, name
  return declared


@functools.cache
def switches() -> dict:
  """Every method switch: ``{path: base.Switch}``."""
  return _declared("SWITCHES")


@functools.cache
def options() -> dict:
  """Every switch option: ``{path: base.Option}``, its ``read_with`` extended by the
  methods' ``ALSO_READ_WITH``."""
  declared = _declared("OPTIONS")
  for _, module in _modules_with("ALSO_READ_WITH"):
    for path, more_switches in module.ALSO_READ_WITH.items():
      declared[path] = dataclasses.replace(
          declared[path], read_with=declared[path].read_with + more_switches)
  return declared


def field_rules() -> dict:
  """``{path: rule}`` of every field the methods declare (gsc_jax/validation.py)."""
  return {path: declaration.rule for path, declaration in {**switches(), **options()}.items()}


def add_fields(config) -> None:
  """Adds every field the methods declare to ``config`` (configs/common.py), creating its
  section: a switch and a preset-filled option unset (None, typed), another option at its
  default."""
  for path, declaration in {**switches(), **options()}.items():
    section, name = path.split(".")
    if section not in config:
      config[section] = config_dict.ConfigDict()
    if isinstance(declaration, base.Switch):
      config[section][name] = config_dict.placeholder(type(declaration.neutral))
    elif declaration.preset:
      config[section][name] = config_dict.placeholder(type(declaration.default))
    else:
      config[section][name] = declaration.default


def field(config, path: str):
  """The value of the config field ``path`` ("section.name" or "name")."""
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _set(config, path: str, value) -> None:
  section, name = path.split(".")
  config[section][name] = value


def _reading_methods(switch_paths) -> list[str]:
  """The methods whose preset names one of ``switch_paths``."""
  return [name for name in names()
          if any(path in module_of(name).PRESET for path in switch_paths)]


def _switched_on_condition(switch_paths) -> str:
  """``gsc.relation=true`` / ``loss.kd_weight>0``, joined by ``or``."""
  return " or ".join(
      f"{path}=true" if isinstance(switches()[path].neutral, bool) else f"{path}>0"
      for path in switch_paths)


def options_set(config) -> dict:
  """The switch options the user set: away from their declared default, or, for one the
  preset fills, set at all. Call it before ``resolve_preset``, which fills the unset
  ones."""
  return {path: field(config, path) for path, option in options().items()
          if field(config, path) is not None
          and (option.preset or field(config, path) != option.default)}


def unread_options(config, set_options: dict) -> list[str]:
  """One line per option of ``set_options`` (``options_set``) that ``config.method`` never
  reads once its preset is resolved: the method's preset names none of the option's
  switches, every one of them is off, or the field that selects it (``read_when``)
  selects something else."""
  module = module_of(config.method)
  problems = []
  for path, value in set_options.items():
    option = options()[path]
    if not any(switch in module.PRESET for switch in option.read_with):
      readers = _reading_methods(option.read_with)
      problems.append(f"{path}={value!r} is not read by method {config.method} (only by "
                      f"{' and '.join(readers)}); remove it or use "
                      + (f"method={readers[0]}" if len(readers) == 1 else "one of those"))
    elif all(field(config, switch) in (None, switches()[switch].neutral)
             for switch in option.read_with):
      problems.append(f"{path}={value!r} is only read with "
                      f"{_switched_on_condition(option.read_with)}; remove it or switch that on")
    elif option.read_when is not None:
      selector, values = option.read_when
      if field(config, selector) not in values:
        problems.append(f"{path}={value!r} is only read with "
                        f"{' or '.join(f'{selector}={v}' for v in values)}, not "
                        f"{selector}={field(config, selector)}; remove it or set {selector}")
  return problems


def cross_field_problems(config) -> list[str]:
  """The rules between fields that the method modules declare (``config_problems``)."""
  return [problem for _, module in _modules_with("config_problems")
          for problem in module.config_problems(config)]


def resolve_preset(config) -> list[str]:
  """Fills the unset (None) fields from ``config.method``'s preset, its published
  per-task values, the neutral values of the switches it does not read and the defaults
  of the preset-filled options; returns what it filled. ``optim.epochs_incremental`` left
  unset means the published per-task value, otherwise ``optim.epochs_step0``.
  """
  module = module_of(config.method)
  foreign = [path for path, switch in switches().items()
             if path not in module.PRESET and field(config, path) not in (None, switch.neutral)]
  if foreign:
    raise errors.InputError(
        f"method {config.method} does not use {', '.join(foreign)} (it reads "
        f"{', '.join(sorted(module.PRESET)) or 'no method switch'}); remove "
        f"{'it' if len(foreign) == 1 else 'them'} or choose a method that uses "
        f"{'it' if len(foreign) == 1 else 'them'}")
  values = {**base.PROTOCOL_PRESET_DEFAULTS,
            **{path: option.default for path, option in options().items() if option.preset},
            **{path: switch.neutral for path, switch in switches().items()},
            **module.PRESET}
  for task in ("*", config.task):
    values.update(module.PUBLISHED.get((config.dataset, task), {}))
  not_for_domain_tasks = [path for path, switch in switches().items()
                          if not switch.domain_tasks]
  domain_task = config.dataset in tasks.DOMAIN_INCREMENTAL_DATASETS
  if domain_task:
    values.update({path: switches()[path].neutral for path in not_for_domain_tasks})
  values.setdefault("optim.epochs_incremental", config.optim.epochs_step0)
  filled = []
  for path, value in values.items():
    if field(config, path) is None:
      _set(config, path, value)
      filled.append(f"{path}={value}")
  switched_on = [path for path in not_for_domain_tasks
                 if field(config, path) != switches()[path].neutral]
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
  step's labels, then every method's ``passes_after_step0``, so that any method can start
  from it.
  """
  if not facts.has_teacher:
    return base.Method(after_step=tuple(
        data_pass for _, module in _modules_with("passes_after_step0")
        for data_pass in module.passes_after_step0(facts, model)))
  return module_of(config.method).build(config, facts, model, teacher_model)

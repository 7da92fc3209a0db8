"""A method owns its configuration (gsc_jax/methods/__init__.py): each method module declares
its switches and options (default, rule, doc, what makes them read); the config, the
validation and the switch checks are built from those declarations, and no generic module
names a method or one of its fields."""

import ast
import os
import sys
import types

import pytest

from configs import common
from configs import synthetic
from gsc_jax import errors
from gsc_jax import methods
from gsc_jax import rules
from gsc_jax import validation
from gsc_jax.methods import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules that serve every method: none may name a method or a field of one.
GENERIC_MODULES = ("gsc_jax/methods/__init__.py", "gsc_jax/validation.py", "gsc_jax/train.py",
                   "gsc_jax/train_step.py", "gsc_jax/passes.py", "gsc_jax/workdir.py",
                   "configs/common.py")


def test_every_declared_field_is_valid_documented_and_in_the_config():
  config = synthetic.get_config("15-1")
  declared = {**methods.switches(), **methods.options()}
  assert {"loss.kd_weight", "pseudo.entropy", "gsc.tau", "loss.pod_scales"} <= set(declared)
  for path, declaration in declared.items():
    assert declaration.doc.strip(), path
    default = (declaration.neutral if isinstance(declaration, base.Switch)
               else declaration.default)
    assert declaration.rule.problem(default) is None, path  # the default passes its rule
    in_config = methods.field(config, path)  # KeyError if add_fields missed it
    if isinstance(declaration, base.Switch) or declaration.preset:
      assert in_config is None, path  # filled by the preset
    else:
      assert in_config == default, path
  for path, option in methods.options().items():
    assert option.read_with and set(option.read_with) <= set(methods.switches()), path
    if option.read_when is not None:
      selector, values = option.read_when
      assert all(declared[selector].rule.problem(value) is None for value in values), path
  # The protocol's table and the methods' do not overlap.
  assert not set(validation.FIELDS) & set(declared)


def test_gsc_reads_plops_adaptive_factor_too():
  # Declared by plop.py; gsc.py's ALSO_READ_WITH adds its re-labelling switch.
  assert methods.options()["pseudo.adaptive_factor"].read_with == ("pseudo.entropy",
                                                                   "gsc.prototypes")


@pytest.fixture
def toy_method(monkeypatch):
  """A method module that only this test knows: one switch and one option of its own."""
  module = types.ModuleType("gsc_jax.methods.toy", "Toy: a method of the tests.")
  module.SWITCHES = {"toy.strength": base.Switch(0.0, rules.NON_NEGATIVE, "how much")}
  module.OPTIONS = {"toy.mode": base.Option("a", rules.Choice(("a", "b")), "which way",
                                            read_with=("toy.strength",))}
  module.PRESET = {"toy.strength": 1.0}
  module.PUBLISHED = {}
  module.build = lambda config, facts, model, teacher_model: base.Method()
  real_names = methods.names
  monkeypatch.setitem(sys.modules, "gsc_jax.methods.toy", module)
  monkeypatch.setattr(methods, "names", lambda: sorted(real_names() + ["toy"]))
  methods.switches.cache_clear()
  methods.options.cache_clear()
  yield module
  methods.switches.cache_clear()
  methods.options.cache_clear()


def _checked(argument):
  config = synthetic.get_config(argument)
  set_options = methods.options_set(config)
  methods.resolve_preset(config)
  validation.validate(config, 1, set_options)
  return config


def test_a_new_method_module_brings_its_own_fields(toy_method):
  del toy_method
  assert {"toy.strength", "toy.mode"} <= set(common.field_paths(synthetic.get_config("15-1")))
  config = _checked("15-1,method=toy,toy.mode=b")
  assert config.toy.strength == 1.0 and config.toy.mode == "b"
  assert config.loss.kd_weight == 0.0  # the other methods' switches: neutral
  with pytest.raises(errors.InputError, match=r"toy.mode='c' must be one of: a, b"):
    _checked("15-1,method=toy,toy.mode=c")
  with pytest.raises(errors.InputError,
                     match=r"toy.mode='b' is not read by method mib \(only by toy\)"):
    _checked("15-1,method=mib,toy.mode=b")
  with pytest.raises(errors.InputError, match=r"toy.mode='b' is only read with toy.strength>0"):
    _checked("15-1,method=toy,toy.strength=0,toy.mode=b")
  with pytest.raises(errors.InputError, match=r"method mib does not use toy.strength"):
    _checked("15-1,method=mib,toy.strength=2")


def test_a_field_declared_by_two_modules_is_refused(toy_method):
  toy_method.OPTIONS = {"gsc.tau": base.Option(1.0, rules.POSITIVE, "again",
                                               read_with=("toy.strength",))}
  with pytest.raises(ValueError, match=r"gsc.tau is declared by both methods/gsc.py and "
                                       r"methods/toy.py"):
    methods.options()


def _method_field_sections():
  protocol = {path.split(".")[0] for path in validation.FIELDS}
  return {path.split(".")[0] for path in {**methods.switches(), **methods.options()}} - protocol


@pytest.mark.parametrize("relative_path", GENERIC_MODULES)
def test_generic_modules_name_no_method_and_no_method_field(relative_path):
  tree = ast.parse(open(os.path.join(REPO, relative_path)).read())
  method_modules = {f"gsc_jax.methods.{name}" for name in methods.names()}
  fields = set(methods.switches()) | set(methods.options())
  sections = _method_field_sections()
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      imported = {f"{node.module}.{alias.name}" for alias in node.names}
      assert not imported & method_modules, (relative_path, imported & method_modules)
    if isinstance(node, ast.Import):
      assert not {alias.name for alias in node.names} & method_modules, relative_path
    # config.gsc, config.pseudo.x, ...: a method's section read directly.
    if isinstance(node, ast.Attribute) and node.attr in sections:
      assert not (isinstance(node.value, ast.Name) and node.value.id == "config"), (
          relative_path, node.attr, node.lineno)
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings):
      named = {path for path in fields if path in node.value}
      assert not named, (relative_path, named, node.lineno)

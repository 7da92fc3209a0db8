"""What a method is: a ``Method`` bundle of pure functions, built once per step.

The train step (gsc_jax/train_step.py) is generic over it:

  teacher_outputs = teacher(images)                      (frozen, inference mode)
  targets, nu     = method.training_targets(labels, teacher_outputs, frozen, epoch)
  ce, d ce/d z    = method.classification_loss(logits, targets, nu)  and its logit gradient
  d ce/d z, state = method.logit_gradient_transform.update(d ce/d z, state,
                                                           targets=..., logits=...)
  other terms     = method.other_terms(outputs, targets, teacher_outputs, state)

``frozen`` holds what the step reads but never changes: ``frozen["teacher"]`` (the
previous step's variables) and the results of the method's data passes. A ``DataPass``
runs over the step's training images either BEFORE the step, with the teacher (PLOP's
entropy thresholds, over one epoch of augmented training batches as PLOP does; GSC's
prototypes, with evaluation preprocessing), or AFTER it, with the final model (the first
reconstruction's prototypes, read by the next step). Its results are saved in
``step_<t>/<name>.npz``.
"""

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from gsc_jax import losses


# --- the config fields a method declares (gsc_jax/methods/__init__.py) ---------------------

@dataclasses.dataclass(frozen=True)
class Switch:
  """A field that turns a part of a method on. ``neutral``: the value that adds nothing,
  which every method whose ``PRESET`` does not name the switch keeps (set otherwise, it is
  an error). The config holds it unset (None) until the preset is resolved. ``rule``: a
  gsc_jax/rules.py rule. ``domain_tasks=False``: a part for old classes hidden in the
  background or for groups of classes added by a step, which a domain-incremental task
  (every step labels every class) has not; it is off there."""
  neutral: Any
  rule: Any
  doc: str
  domain_tasks: bool = True


@dataclasses.dataclass(frozen=True)
class Option:
  """A field read only while one of the switches ``read_with`` is on (and, with
  ``read_when=(path, values)``, while the field ``path`` has one of ``values``); set away
  from ``default`` where it is never read, it is an error. ``preset=True``: the config holds
  it unset (None) and the method's preset fills it, ``default`` where the preset does
  not."""
  default: Any
  rule: Any
  doc: str
  read_with: tuple[str, ...]
  read_when: tuple[str, tuple] | None = None
  preset: bool = False


# Protocol fields (configs/common.py) that a method's preset may set, with the value they
# take where it does not.
PROTOCOL_PRESET_DEFAULTS = {"model.new_classifier_init": "mib",
                            "data.void_to_background": False}


class DataPass(NamedTuple):
  """One deterministic pass over the step's training images with their train labels.

  ``batch_statistics(variables, frozen, batch)`` is jitted; ``variables`` are the
  teacher's for a pass before the step and the final model's for a pass after it, and
  ``frozen`` is what the train step reads (``frozen["teacher"]`` at t > 0). Its per-batch
  results,
  gathered over every process as host arrays, go to ``finish(results, previous)``, which
  returns the named arrays to keep; ``previous`` is this pass's result of the previous
  step (or None).
  """
  name: str
  batch_statistics: Callable[[dict, dict, dict], Any]
  finish: Callable[[list, dict | None], dict]
  # True: one epoch of the step's TRAINING batches (random crops and flips, the last
  # partial batch dropped), as PLOP computes its thresholds; False: every image once, with
  # evaluation preprocessing.
  augmented: bool = False
  # What the result is for, in the log line that announces the pass ("" = its name says it).
  purpose: str = ""


def images_labels_as_targets(labels, teacher_outputs, frozen, epoch):
  """The step's labels are the targets; nu = 1 for every image."""
  del teacher_outputs, frozen, epoch
  return labels, jnp.ones(labels.shape[0], jnp.float32)


def nu_weighted_cross_entropy(logits, targets, nu):
  """``-(1 / BHW) * sum_i nu_b(i) * log softmax(z_i)_{y_i}`` (docs/algorithm.md 1.9, 4)."""
  return losses.weighted_cross_entropy(logits, targets, nu)


def no_other_terms(outputs, targets, teacher_outputs, transform_state):
  del outputs, targets, teacher_outputs, transform_state
  return {}


class Method(NamedTuple):
  """The pure functions of one method at one step (see the module docstring).

  ``logit_gradient_transform``: an optax ``GradientTransformationExtraArgs`` applied to the
  classification loss's gradient with respect to the logits [B, H, W, K], called with
  ``targets=`` and ``logits=`` (stop-gradient); its state lives in the train state.
  ``transform_scalars(state)`` names what of that state to log. ``training_targets``
  receives the epoch of the iteration within the step (an int32 scalar; PLOP's and FISS's
  thresholds may change with it). ``frozen_from_previous_step``
  names the after-step passes of step t-1 whose results this step reads from ``frozen``.
  """
  training_targets: Callable = images_labels_as_targets
  classification_loss: Callable = nu_weighted_cross_entropy
  other_terms: Callable = no_other_terms
  logit_gradient_transform: optax.GradientTransformationExtraArgs | None = None
  transform_scalars: Callable[[Any], dict] = lambda state: {}
  before_step: tuple[DataPass, ...] = ()
  after_step: tuple[DataPass, ...] = ()
  frozen_from_previous_step: tuple[str, ...] = ()
  reports_nu: bool = False  # log the batch mean of nu (pseudo-labelling methods)

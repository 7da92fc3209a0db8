"""GSC (Cong et al., IEEE TMM 2024), as reconstructed here (docs/algorithm.md 5,
docs/gsc_step.md): the PLOP step plus three parts, each switchable.

- ``gsc.compensation`` (5.1): step-aware gradient compensation, an optax transform on the
  cross-entropy's logit gradients (gsc_jax/compensation.py);
- ``gsc.relation`` (5.2): soft-sharp semantic relation distillation (soft labels,
  sharpening, class relation), or the two-temperature variant;
- ``gsc.prototypes`` (5.3): prototypical pseudo re-labelling of the background pixels,
  with per-class prototypes saved at the end of every step (``prototype_pass``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gsc_jax import compensation
from gsc_jax import losses
from gsc_jax import pseudo_labels
from gsc_jax.methods import base
from gsc_jax.methods import plop
from gsc_jax.tasks import IGNORE_LABEL

PRESET = {**plop.PRESET, "gsc.compensation": True, "gsc.relation": True,
          "gsc.prototypes": True}
PUBLISHED = plop.PUBLISHED  # GSC follows PLOP's protocol


def training_targets_of(config, facts):
  """Targets among the pixels labelled 0: PLOP's entropy rule and/or the prototypical
  re-labelling (``pseudo_labels.prototype_relabel``). With both and
  ``gsc.relabel_with_entropy``, a pixel must pass the entropy filter AND get a class from
  the prototype rule, which also picks the class. Rejected pixels become 255. With
  ``pseudo.adaptive_factor``, nu = accepted background pixels / background pixels."""
  gsc, entropy = config.gsc, config.pseudo.entropy
  if not gsc.prototypes:
    return plop.entropy_targets(config, facts) if entropy else base.images_labels_as_targets

  def training_targets(labels, teacher_outputs, frozen):
    teacher_logits = teacher_outputs["logits"]
    background = labels == 0
    relabelled, accepted = pseudo_labels.prototype_relabel(
        labels, teacher_logits, teacher_outputs["head"], frozen["prototypes"],
        frozen["prototype_seen"], gsc.tau, gsc.theta, gsc.similarity)
    if entropy and gsc.relabel_with_entropy:
      _, _, entropy_accepted = pseudo_labels.entropy_pseudo_labels(
          labels, teacher_logits, frozen["thresholds"], facts.num_classes)
      accepted = accepted & entropy_accepted
    targets = jnp.where(background, jnp.where(accepted, relabelled, IGNORE_LABEL), labels)
    if not config.pseudo.adaptive_factor:
      return targets, jnp.ones(labels.shape[0], jnp.float32)
    return targets, pseudo_labels.adaptive_factor(accepted, background)

  return training_targets


def prototype_pass(facts, model, teacher_model, training_targets) -> base.DataPass:
  """GSC's prototypes at the end of a step (docs/algorithm.md 5.3): per class, the mean
  head feature of its pixels over the step's training data, with ``training_targets`` as
  the labels (ground truth for the step's classes, pseudo-labels for old ones, background
  included); classes absent from the step keep their previous prototype."""
  num_classes = facts.num_classes

  def batch_statistics(variables, frozen, batch):
    labels = batch["label"].astype(jnp.int32)
    teacher_outputs = None
    if teacher_model is not None and training_targets is not base.images_labels_as_targets:
      teacher_outputs = teacher_model.apply(frozen["teacher"], batch["image"], train=False)
    targets, _ = training_targets(labels, teacher_outputs, frozen)
    head = model.apply(variables, batch["image"], train=False)["head"]
    return pseudo_labels.prototype_sums(head, targets, num_classes)

  def finish(results, previous):
    sums = np.sum([np.asarray(s, np.float64) for s, _ in results], axis=0)
    counts = np.sum([np.asarray(c, np.float64) for _, c in results], axis=0)
    previous_prototypes = previous_seen = None
    if previous is not None:
      previous_prototypes, previous_seen = previous["prototypes"], previous["prototype_seen"]
    prototypes, seen = pseudo_labels.updated_prototypes(previous_prototypes, previous_seen,
                                                        sums, counts)
    return {"prototypes": prototypes.astype(np.float32), "prototype_seen": seen}

  return base.DataPass("prototypes", batch_statistics, finish)


def compensation_transform(config, facts):
  """The optax transform of 5.1 with the step's groups and exponent zeta = K_old / K,
  taking ``targets=`` and ``logits=``; and ``weights(state, targets, logits)``, the
  per-pixel weights it applied."""
  gsc = config.gsc
  groups, is_current_group = compensation.group_of_channel(facts.classes_per_step, gsc.groups)
  exponent = facts.num_old_classes / facts.num_classes if gsc.use_exponent else 1.0
  transform, weights_of = compensation.gradient_compensation(groups, is_current_group,
                                                             exponent, gsc.ema_decay)

  def update(logit_gradients, state, params=None, *, targets, logits):
    probabilities = compensation.class_probabilities(logits, gsc.magnitude)
    return transform.update(logit_gradients, state, params, targets=targets,
                            probabilities=probabilities)

  def weights(state, targets, logits):
    return weights_of(state, targets, compensation.class_probabilities(logits, gsc.magnitude))

  return optax.GradientTransformationExtraArgs(transform.init, update), weights


def mean_weight_per_class(targets, pixel_weights, num_old_classes: int):
  """Per old class c, the mean compensation weight of the pixels targeted at c (1 if none)."""
  one_hot = losses.one_hot_targets(targets, num_old_classes)
  counts = jnp.sum(one_hot, axis=(0, 1, 2))
  sums = jnp.sum(one_hot * pixel_weights[..., None], axis=(0, 1, 2))
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 1.0)


def relation_terms(config, facts, compensation_weights):
  """``outputs, targets, teacher_outputs, transform_state -> {name: weighted term}`` of
  5.2: soft labels, sharpening and class relation (``soft_sharp``), or the two-temperature
  distillation (``temperature``). The class relation term weights each old class by its
  mean compensation weight (1 without compensation)."""
  gsc, num_old_classes = config.gsc, facts.num_old_classes

  def class_weights(targets, logits, transform_state):
    if transform_state is None:
      return jnp.ones(num_old_classes, jnp.float32)
    weights = compensation_weights(transform_state, targets, jax.lax.stop_gradient(logits))
    return mean_weight_per_class(targets, weights, num_old_classes)

  def terms(outputs, targets, teacher_outputs, transform_state):
    logits, teacher_logits = outputs["logits"], teacher_outputs["logits"]
    if gsc.relation_form == "temperature":
      return {"temperature_kd": gsc.temperature_kd_weight * losses.temperature_distillation(
          logits, teacher_logits, gsc.soft_temperature, gsc.sharp_temperature)}
    return {
        "soft_label": gsc.soft_label_weight * losses.soft_label_loss(logits, targets,
                                                                     teacher_logits),
        "sharpening": gsc.sharpening_weight * losses.sharpening_loss(logits),
        "relation": gsc.relation_weight * losses.class_relation_loss(
            logits, targets, teacher_logits, class_weights(targets, logits, transform_state)),
    }

  return terms


def build(config, facts, model, teacher_model) -> base.Method:
  gsc = config.gsc
  training_targets = training_targets_of(config, facts)
  pod = plop.pod_term(config, facts)
  transform = compensation_weights = None
  if gsc.compensation:
    transform, compensation_weights = compensation_transform(config, facts)
  relation = relation_terms(config, facts, compensation_weights) if gsc.relation else None

  def other_terms(outputs, targets, teacher_outputs, transform_state):
    terms = {} if pod is None else {"pod": pod(outputs, teacher_outputs)}
    if relation is not None:
      terms.update(relation(outputs, targets, teacher_outputs, transform_state))
    return terms

  pseudo_labelled = config.pseudo.entropy or gsc.prototypes
  return base.Method(
      training_targets=training_targets, other_terms=other_terms,
      logit_gradient_transform=transform,
      transform_scalars=lambda state: {"group_means": state.group_means},
      before_step=(plop.threshold_pass(config, facts, teacher_model),)
      if config.pseudo.entropy else (),
      after_step=(prototype_pass(facts, model, teacher_model, training_targets),)
      if gsc.prototypes else (),
      frozen_from_previous_step=("prototypes",) if gsc.prototypes else (),
      reports_nu=pseudo_labelled)

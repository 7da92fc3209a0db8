"""GSC (Cong et al., IEEE TMM 2024), as reconstructed here from its sister methods' released
code (docs/algorithm.md 5, docs/gsc_step.md): the PLOP step, with FISS's per-epoch rising
entropy-threshold quantile, plus three parts, each switchable.

- ``gsc.compensation`` (5.1): step-aware gradient compensation, an optax transform on the
  cross-entropy's logit gradients (gsc_jax/compensation.py; FISS's nested groups);
- ``gsc.relation`` (5.2): soft-sharp semantic relation distillation (RDP: soft labels and
  sharpening; FISS's class-relation term optional), or the two-temperature variant;
- ``gsc.prototypes`` (5.3): prototypical pseudo re-labelling of the background pixels (RDP),
  with per-old-class prototypes from the teacher at the start of the step
  (``teacher_prototype_pass``), or from the previous step's final model
  (``prototype_pass``, the first reconstruction).

``FIRST_RECONSTRUCTION`` holds the values that give the project's first reconstruction.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import compensation
from gsc_jax import losses
from gsc_jax import pseudo_labels
from gsc_jax import rules
from gsc_jax.methods import base
from gsc_jax.methods import plop
from gsc_jax.tasks import IGNORE_LABEL

# 5.2's soft-label term by gsc.soft_label_form.
SOFT_LABEL_LOSSES = {
    "softmax": losses.soft_label_loss_all_pixels,          # RDP
    "bce": losses.soft_label_binary_cross_entropy,         # GLFC / HFC
    "softmax_valid": losses.soft_label_loss,               # first reconstruction
}

_SOFT_SHARP = ("gsc.relation_form", ("soft_sharp",))
_TEMPERATURE = ("gsc.relation_form", ("temperature",))
_RELATION, _PROTOTYPES = ("gsc.relation",), ("gsc.prototypes",)
SWITCHES = {
    "gsc.compensation": base.Switch(False, rules.Flag(), "5.1 step-aware gradient "
                                    "compensation", domain_tasks=False),
    "gsc.relation": base.Switch(False, rules.Flag(), "5.2 semantic relation distillation"),
    "gsc.prototypes": base.Switch(False, rules.Flag(), "5.3 prototypical pseudo "
                                  "re-labelling", domain_tasks=False),
}
OPTIONS = {
    # 5.1 (gsc_jax/compensation.py)
    "gsc.groups": base.Option("fiss", rules.Choice(compensation.GROUPINGS),
                              "fiss (nested, FISS) | step | old_new (GLFC) | class",
                              read_with=("gsc.compensation",)),
    "gsc.magnitude": base.Option("sigmoid", rules.Choice(compensation.MAGNITUDES),
                                 "g = 1 - p(y): sigmoid (FISS, GLFC) | softmax (HFC)",
                                 read_with=("gsc.compensation",)),
    "gsc.use_exponent": base.Option(True, rules.Flag(), "g^zeta with zeta = K_old / K "
                                    "(false: zeta = 1)", read_with=("gsc.compensation",)),
    "gsc.bound": base.Option(False, rules.Flag(), "HFC: g <- ln(1 + g), old-class weights in "
                             "[0.5, 1.2]", read_with=("gsc.compensation",)),
    "gsc.ema_decay": base.Option(0.0, rules.Number(float, minimum=0.0, below=1.0),
                                 "EMA of the group means across iterations (0: per batch)",
                                 read_with=("gsc.compensation",)),
    # 5.2
    "gsc.relation_form": base.Option(
        "soft_sharp", rules.Choice(("soft_sharp", "temperature")),
        "soft_sharp (RDP) | temperature (two-temperature distillation)", read_with=_RELATION),
    "gsc.soft_label_form": base.Option(
        "softmax", rules.Choice(tuple(SOFT_LABEL_LOSSES)),
        "soft-label term: softmax (RDP, every pixel) | bce (GLFC/HFC) | softmax_valid (first "
        "reconstruction: void and rejected pixels left out)",
        read_with=_RELATION, read_when=_SOFT_SHARP),
    "gsc.soft_label_weight": base.Option(0.3, rules.NON_NEGATIVE, "soft-label term weight",
                                         read_with=_RELATION, read_when=_SOFT_SHARP),
    "gsc.sharpening_weight": base.Option(0.1, rules.NON_NEGATIVE, "sharpening term weight",
                                         read_with=_RELATION, read_when=_SOFT_SHARP),
    "gsc.class_relation": base.Option(
        "off", rules.Choice(("off", "fiss", "first")),
        "off | fiss (FISS's term) | first (first reconstruction)",
        read_with=_RELATION, read_when=_SOFT_SHARP),
    "gsc.class_relation_weight": base.Option(
        0.5, rules.NON_NEGATIVE, "class-relation term weight", read_with=_RELATION,
        read_when=("gsc.class_relation", ("fiss", "first"))),
    "gsc.temperature_kd_weight": base.Option(10.0, rules.NON_NEGATIVE, "two-temperature "
                                             "distillation weight", read_with=_RELATION,
                                             read_when=_TEMPERATURE),
    "gsc.soft_temperature": base.Option(2.0, rules.POSITIVE, "its soft temperature",
                                        read_with=_RELATION, read_when=_TEMPERATURE),
    "gsc.sharp_temperature": base.Option(0.5, rules.POSITIVE, "its sharp temperature",
                                         read_with=_RELATION, read_when=_TEMPERATURE),
    # 5.3
    "gsc.prototype_source": base.Option(
        "teacher", rules.Choice(("teacher", "previous_model")),
        "teacher (the teacher on this step's images, before it: RDP) | previous_model (the "
        "previous step's final model on its own images, after it: first reconstruction)",
        read_with=_PROTOTYPES),
    "gsc.similarity": base.Option("euclidean", rules.Choice(pseudo_labels.SIMILARITIES),
                                  "euclidean (plain distance, RDP) | cosine | "
                                  "squared_euclidean", read_with=_PROTOTYPES),
    "gsc.tau": base.Option(1.0, rules.POSITIVE, "temperature of the softmax over prototype "
                           "similarities", read_with=_PROTOTYPES),
    "gsc.relabel": base.Option(
        "filter_then_relabel", rules.Choice(("filter_then_relabel", "rdp", "first")),
        "filter_then_relabel (entropy filter, then argmax of the corrected score) | rdp "
        "(every background pixel relabelled, nu = 1) | first (both rules must accept; "
        "theta)", read_with=_PROTOTYPES),
    "gsc.theta": base.Option(0.5, rules.FRACTION, "relabel=first: minimum corrected score "
                             "of an old class", read_with=_PROTOTYPES,
                             read_when=("gsc.relabel", ("first",))),
}
# nu weights the pseudo-labels of the re-labelling as it does PLOP's entropy rule's.
ALSO_READ_WITH = {"pseudo.adaptive_factor": _PROTOTYPES}
PRESET = {**plop.PRESET, "gsc.compensation": True, "gsc.relation": True,
          "gsc.prototypes": True,
          # FISS's rising quantile pi_e = min(0.2 + 0.1 e, 0.8) (docs/algorithm.md 5).
          "pseudo.quantile_start": 0.2, "pseudo.quantile_per_epoch": 0.1,
          "pseudo.quantile_max": 0.8}
PUBLISHED = plop.PUBLISHED  # GSC follows PLOP's protocol

# The first reconstruction's choices (docs/gsc_step.md "Variants"), as config values.
FIRST_RECONSTRUCTION = {
    "pseudo.quantile_start": 0.5, "pseudo.quantile_per_epoch": 0.0, "pseudo.quantile_max": 0.5,
    "gsc.groups": "step", "gsc.magnitude": "softmax",
    "gsc.soft_label_form": "softmax_valid", "gsc.class_relation": "first",
    "gsc.prototype_source": "previous_model", "gsc.similarity": "cosine", "gsc.tau": 0.1,
    "gsc.relabel": "first", "gsc.theta": 0.5,
}


def training_targets_of(config, facts):
  """Targets among the pixels labelled 0 (docs/algorithm.md 5.3), by ``gsc.relabel``:

  - ``filter_then_relabel``: PLOP's entropy filter decides which background pixels are
    kept (the others become 255) and sets nu; a kept pixel takes ``argmax s``, the
    prototype-corrected teacher score, possibly 0;
  - ``rdp``: every background pixel takes ``argmax s``; nu = 1;
  - ``first``: the entropy rule AND the prototype rule (with theta) must accept; the
    prototype rule picks the class.

  Without ``gsc.prototypes``, PLOP's entropy targets.
  """
  gsc, entropy = config.gsc, config.pseudo.entropy
  if not gsc.prototypes:
    return plop.entropy_targets(config, facts) if entropy else base.images_labels_as_targets
  num_classes, adaptive = facts.num_classes, config.pseudo.adaptive_factor

  def entropy_accepted(labels, teacher_logits, frozen, epoch):
    if not entropy:
      return labels == 0
    _, _, accepted = pseudo_labels.entropy_pseudo_labels(
        labels, teacher_logits, plop.thresholds_of_epoch(frozen, epoch), num_classes)
    return accepted

  def training_targets(labels, teacher_outputs, frozen, epoch):
    teacher_logits, teacher_features = teacher_outputs["logits"], teacher_outputs["head"]
    if gsc.relabel == "first":
      relabelled, accepted = pseudo_labels.prototype_relabel(
          labels, teacher_logits, teacher_features, frozen["prototypes"],
          frozen["prototype_seen"], gsc.tau, gsc.theta, gsc.similarity)
      accepted = accepted & entropy_accepted(labels, teacher_logits, frozen, epoch)
      background = labels == 0
      targets = jnp.where(background, jnp.where(accepted, relabelled, IGNORE_LABEL), labels)
      nu = pseudo_labels.adaptive_factor(accepted, background)
    else:
      scores = pseudo_labels.prototype_scores(
          teacher_logits, teacher_features, frozen["prototypes"], frozen["prototype_seen"],
          gsc.tau, gsc.similarity)
      if gsc.relabel == "rdp":
        targets, nu = pseudo_labels.rdp_relabel(labels, scores)
      else:
        targets, nu = pseudo_labels.filter_then_relabel(
            labels, scores, entropy_accepted(labels, teacher_logits, frozen, epoch))
    return targets, nu if adaptive else jnp.ones_like(nu)

  return training_targets


def _prototypes_from_sums(results, previous=None):
  """Prototypes from per-batch (feature sums, counts): ``pseudo_labels.updated_prototypes``."""
  sums = np.sum([np.asarray(s, np.float64) for s, _ in results], axis=0)
  counts = np.sum([np.asarray(c, np.float64) for _, c in results], axis=0)
  previous_prototypes = previous_seen = None
  if previous is not None:
    previous_prototypes, previous_seen = previous["prototypes"], previous["prototype_seen"]
  prototypes, seen = pseudo_labels.updated_prototypes(previous_prototypes, previous_seen,
                                                      sums, counts)
  return {"prototypes": prototypes.astype(np.float32), "prototype_seen": seen}


def teacher_prototype_pass(teacher_model) -> base.DataPass:
  """GSC's prototypes at the START of a step (docs/algorithm.md 5.3, RDP): per old class
  c < K_old, the mean teacher head feature of its pixels over the step's training images,
  a pixel labelled 0 counting for the teacher's argmax (``pseudo_labels.
  teacher_prototype_sums``); a class without pixels is unseen."""

  def batch_statistics(variables, frozen, batch):
    del frozen
    outputs = teacher_model.apply(variables, batch["image"], train=False)
    return pseudo_labels.teacher_prototype_sums(outputs["head"], outputs["logits_low"],
                                                batch["label"].astype(jnp.int32))

  return base.DataPass("teacher_prototypes", batch_statistics, _prototypes_from_sums)


def prototype_pass(facts, model, teacher_model, training_targets,
                   last_epoch: int = 0) -> base.DataPass:
  """The first reconstruction's prototypes, at the END of a step: per class, the mean head
  feature of the step's final model over its pixels of the step's training data, with
  ``training_targets`` (of the step's last epoch) as the labels: ground truth for the
  step's classes, pseudo-labels for old ones, background included. Classes absent from
  the step keep their previous prototype."""
  num_classes = facts.num_classes

  def batch_statistics(variables, frozen, batch):
    labels = batch["label"].astype(jnp.int32)
    teacher_outputs = None
    if teacher_model is not None and training_targets is not base.images_labels_as_targets:
      teacher_outputs = teacher_model.apply(frozen["teacher"], batch["image"], train=False)
    targets, _ = training_targets(labels, teacher_outputs, frozen, last_epoch)
    head = model.apply(variables, batch["image"], train=False)["head"]
    return pseudo_labels.prototype_sums(head, targets, num_classes)

  return base.DataPass("prototypes", batch_statistics, _prototypes_from_sums)


def passes_after_step0(facts, model) -> tuple[base.DataPass, ...]:
  """The hook every step 0 runs (``methods.build``): the previous-model prototypes of step
  0, so that a GSC run with ``gsc.prototype_source=previous_model`` can start from any
  method's step 0."""
  return (prototype_pass(facts, model, None, base.images_labels_as_targets)._replace(
      purpose="per-class mean features, saved so that a GSC run with "
              "gsc.prototype_source=previous_model can start from this step 0"),)


def compensation_transform(config, facts):
  """The optax transform of 5.1 for the step (``compensation.gradient_compensation``) and
  ``weights(state, targets, logits)``, the per-pixel weights it applied."""
  gsc = config.gsc
  return compensation.gradient_compensation(
      facts.classes_per_step, grouping=gsc.groups, magnitude=gsc.magnitude,
      use_exponent=gsc.use_exponent, bound=gsc.bound, ema_decay=gsc.ema_decay)



def relation_terms(config, facts, compensation_weights):
  """``outputs, targets, teacher_outputs, transform_state -> {name: weighted term}`` of
  5.2: soft labels and sharpening (``soft_sharp``), with the class-relation term when
  ``gsc.class_relation`` is not ``off``; or the two-temperature distillation
  (``temperature``). The class-relation term weights each class by its mean compensation
  weight (1 per pixel without compensation)."""
  gsc, num_old_classes = config.gsc, facts.num_old_classes

  def pixel_weights(targets, logits, transform_state):
    if transform_state is None:
      return jnp.ones(targets.shape, jnp.float32)
    return compensation_weights(transform_state, targets, jax.lax.stop_gradient(logits))

  def class_relation(logits, targets, teacher_logits, transform_state):
    weights = pixel_weights(targets, logits, transform_state)
    if gsc.class_relation == "fiss":
      class_weights = losses.mean_weight_per_class(targets, weights, facts.num_classes)
      return losses.class_relation_loss_all_classes(logits, targets, teacher_logits,
                                                    class_weights)
    class_weights = losses.mean_weight_per_class(targets, weights, num_old_classes,
                                                 empty_value=1.0)
    return losses.class_relation_loss(logits, targets, teacher_logits, class_weights)

  def terms(outputs, targets, teacher_outputs, transform_state):
    logits, teacher_logits = outputs["logits"], teacher_outputs["logits"]
    if gsc.relation_form == "temperature":
      return {"temperature_kd": gsc.temperature_kd_weight * losses.temperature_distillation(
          logits, teacher_logits, gsc.soft_temperature, gsc.sharp_temperature)}
    result = {
        "soft_label": gsc.soft_label_weight * SOFT_LABEL_LOSSES[gsc.soft_label_form](
            logits, targets, teacher_logits),
        "sharpening": gsc.sharpening_weight * losses.sharpening_loss(logits),
    }
    if gsc.class_relation != "off":
      result["relation"] = gsc.class_relation_weight * class_relation(
          logits, targets, teacher_logits, transform_state)
    return result

  return terms


def compensation_scalars(state) -> dict:
  """What the progress line and log.jsonl show of the compensation (per step of the
  target class: mean and max weight, share of the cross-entropy's logit-gradient mass)."""
  return {"group_means": state.group_means, "weight_mean": state.weight_mean,
          "weight_max": state.weight_max, "gradient_share": state.gradient_share}


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

  before_step, after_step, from_previous = [], [], ()
  if config.pseudo.entropy:
    before_step.append(plop.threshold_pass(config, facts, teacher_model))
  if gsc.prototypes and gsc.prototype_source == "teacher":
    before_step.append(teacher_prototype_pass(teacher_model))
  elif gsc.prototypes:
    after_step.append(prototype_pass(facts, model, teacher_model, training_targets,
                                     last_epoch=config.optim.epochs_incremental - 1))
    from_previous = ("prototypes",)
  return base.Method(
      training_targets=training_targets, other_terms=other_terms,
      logit_gradient_transform=transform,
      transform_scalars=compensation_scalars,
      before_step=tuple(before_step), after_step=tuple(after_step),
      frozen_from_previous_step=from_previous,
      reports_nu=config.pseudo.entropy or gsc.prototypes)

"""Methods as small compositions of named losses and pseudo-labelling functions.

A preset only fills config fields the user left unset (``None``); an explicit value, from
the config file, the ``,key=value`` argument or a ``--config.x=y`` flag, always wins. So
``method=gsc,gsc.prototypes=false`` is GSC without its prototypical re-labelling.

- ``ft``: plain cross-entropy on the step's labels; new classifiers randomly initialised.
  The lower bound (and, on the ``offline`` task, joint training: the upper bound).
- ``mib``: unbiased cross-entropy + ``kd_weight`` x unbiased distillation, MiB
  initialisation of new classifiers, VOC void turned into background as MiB's code does.
- ``plop``: cross-entropy on entropy pseudo-labels weighted by the per-image factor nu,
  + Local POD; MiB initialisation.
- ``gsc``: PLOP + step-aware gradient compensation (compensation.py) + soft-sharp relation
  distillation + prototypical pseudo re-labelling, each switchable (``gsc.compensation``,
  ``gsc.relation``, ``gsc.prototypes``).
"""

import jax.numpy as jnp
import ml_collections

from gsc_jax import losses
from gsc_jax import pseudo_labels
from gsc_jax import tasks
from gsc_jax import errors

_NOTHING = {
    "loss.ce": "plain",
    "loss.kd_weight": 0.0,
    "loss.pod_weight": 0.0,
    "loss.pod_logits_weight": 0.0,
    "model.new_classifier_init": "mib",
    "data.void_to_background": False,
    "pseudo.entropy": False,
    "gsc.compensation": False,
    "gsc.relation": False,
    "gsc.prototypes": False,
}
_PLOP = {**_NOTHING, "loss.pod_weight": 0.01, "loss.pod_logits_weight": 0.0005,
         "pseudo.entropy": True}
PRESETS = {
    "ft": {**_NOTHING, "model.new_classifier_init": "random"},
    "mib": {**_NOTHING, "loss.ce": "unbiased", "loss.kd_weight": 10.0,
            "data.void_to_background": True},
    "plop": _PLOP,
    "gsc": {**_PLOP, "gsc.compensation": True, "gsc.relation": True, "gsc.prototypes": True},
}


# Values the authors published for particular (dataset, task, method) runs (ALGORITHM.md
# 1.6), applied like the presets (only to unset fields). "*" matches any task.
PUBLISHED_TASK_VALUES = {
    ("voc", "15-1", "mib"): {"loss.kd_weight": 100.0},  # MiB's authors, for 15-5s
    ("voc", "10-1", "plop"): {"optim.epochs_incremental": 10},  # PLOP scripts/voc/plop_10-1.sh
    ("voc", "10-1", "gsc"): {"optim.epochs_incremental": 10},  # GSC follows PLOP's protocol
    ("ade", "*", "plop"): {"loss.pod_weight": 0.001, "loss.pod_logits_weight": 0.00001},
    ("ade", "*", "gsc"): {"loss.pod_weight": 0.001, "loss.pod_logits_weight": 0.00001},
}

# Parts that act on old classes hidden in the background, or on groups of classes added
# by a step: a domain-incremental task (Cityscapes) has neither, as every step labels every
# class. Their presets are off there, and switching one on is an error.
NOT_FOR_DOMAIN_TASKS = ("pseudo.entropy", "gsc.compensation", "gsc.prototypes")


def _published_values(config) -> dict:
  values = {}
  for task in ("*", config.task):
    values.update(PUBLISHED_TASK_VALUES.get((config.dataset, task, config.method), {}))
  return values


def resolve_preset(config: ml_collections.ConfigDict) -> list[str]:
  """Fills the unset (None) fields from ``config.method``'s preset and the published
  per-task values; returns what it filled.

  ``optim.epochs_incremental`` left unset means the published per-task value, otherwise
  ``optim.epochs_step0``.
  """
  if config.method not in PRESETS:
    raise errors.InputError(
        f"unknown method {config.method!r}; valid methods: {', '.join(sorted(PRESETS))}")
  domain_task = config.dataset in tasks.DOMAIN_INCREMENTAL_DATASETS
  values = {**PRESETS[config.method], **_published_values(config)}
  if domain_task:
    values.update({path: False for path in NOT_FOR_DOMAIN_TASKS})
  values.setdefault("optim.epochs_incremental", config.optim.epochs_step0)
  filled = []
  for path, value in values.items():
    section, field = path.split(".")
    if config[section][field] is None:
      config[section][field] = value
      filled.append(f"{path}={value}")
  if domain_task:
    switched_on = [path for path in NOT_FOR_DOMAIN_TASKS
                   if config[path.split(".")[0]][path.split(".")[1]]]
    if switched_on:
      raise errors.InputError(
          f"{', '.join(switched_on)} cannot be used on the domain-incremental task "
          f"{config.dataset} {config.task}: every step labels every class, so there are no "
          "old classes hidden in the background and no step groups of classes; set them "
          "to false")
  return filled


def uses_pseudo_labels(config) -> bool:
  return config.pseudo.entropy or config.gsc.prototypes


def training_targets(labels, teacher_outputs, frozen, config, num_classes: int):
  """The labels the cross-entropy trains on and the per-image factor nu [B].

  Without a teacher or pseudo-labelling: the step's labels, nu = 1. Otherwise, among the
  pixels labelled 0: PLOP's entropy rule (``pseudo_labels.entropy_pseudo_labels``) and/or
  GSC's prototypical re-labelling (``pseudo_labels.prototype_relabel``); with both and
  ``gsc.relabel_with_entropy``, a pixel must pass the entropy filter AND get a class from
  the prototype rule, which also picks the class. Rejected pixels become 255. With
  ``pseudo.adaptive_factor``, nu = accepted background pixels / background pixels.
  """
  ones = jnp.ones(labels.shape[0], jnp.float32)
  if teacher_outputs is None or not uses_pseudo_labels(config):
    return labels, ones
  teacher_logits = teacher_outputs["logits"]
  background = labels == 0
  targets = labels
  if config.pseudo.entropy:
    targets, _, accepted = pseudo_labels.entropy_pseudo_labels(
        labels, teacher_logits, frozen["thresholds"], num_classes)
  if config.gsc.prototypes:
    relabelled, prototype_accepted = pseudo_labels.prototype_relabel(
        labels, teacher_logits, teacher_outputs["head"], frozen["prototypes"],
        frozen["prototype_seen"], config.gsc.tau, config.gsc.theta, config.gsc.similarity)
    if config.pseudo.entropy and config.gsc.relabel_with_entropy:
      accepted = accepted & prototype_accepted
    else:
      accepted = prototype_accepted
    targets = jnp.where(background, jnp.where(accepted, relabelled, losses.IGNORE_LABEL),
                        labels)
  if not config.pseudo.adaptive_factor:
    return targets, ones
  return targets, pseudo_labels.adaptive_factor(accepted, background)


def classification_loss(logits, targets, nu, loss_config, num_old_classes: int):
  """The cross-entropy term (the one GSC's compensation scales): MiB's unbiased CE, or
  the nu-weighted CE (nu = 1 for plain fine-tuning). Without old classes (step 0) or
  without new ones (a domain-incremental step) the unbiased CE is the plain CE."""
  if loss_config.ce == "unbiased" and 0 < num_old_classes < logits.shape[-1]:
    return losses.unbiased_cross_entropy(logits, targets, num_old_classes)
  if loss_config.ce in ("plain", "unbiased"):
    return losses.weighted_cross_entropy(logits, targets, nu)
  raise errors.InputError(f"unknown loss.ce {loss_config.ce!r}; valid: plain, unbiased")


def mean_weight_per_class(targets, pixel_weights, num_old_classes: int):
  """Per old class c, the mean compensation weight of the pixels targeted at c (1 if none)."""
  one_hot = losses.one_hot_targets(targets, num_old_classes)
  counts = jnp.sum(one_hot, axis=(0, 1, 2))
  sums = jnp.sum(one_hot * pixel_weights[..., None], axis=(0, 1, 2))
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 1.0)


def distillation_terms(outputs, targets, teacher_outputs, class_weights, config,
                       num_old_classes: int, num_new_classes: int) -> dict:
  """Every loss term besides the cross-entropy, weighted: a dict name -> scalar.

  ``class_weights`` [K_old] (mean compensation weight per old class) weights the class
  relation term. Empty at step 0 (no teacher).
  """
  terms = {}
  if teacher_outputs is None:
    return terms
  logits, teacher_logits = outputs["logits"], teacher_outputs["logits"]
  loss_config, gsc = config.loss, config.gsc
  if loss_config.kd_weight > 0:
    terms["kd"] = loss_config.kd_weight * losses.unbiased_distillation(
        logits, teacher_logits, loss_config.kd_alpha)
  if loss_config.pod_weight > 0 or loss_config.pod_logits_weight > 0:
    terms["pod"] = losses.local_pod(
        outputs, teacher_outputs, num_old_classes, num_new_classes,
        loss_config.pod_weight, loss_config.pod_logits_weight, tuple(loss_config.pod_scales))
  if gsc.relation and gsc.relation_form == "soft_sharp":
    terms["soft_label"] = gsc.soft_label_weight * losses.soft_label_loss(
        logits, targets, teacher_logits)
    terms["sharpening"] = gsc.sharpening_weight * losses.sharpening_loss(logits)
    terms["relation"] = gsc.relation_weight * losses.class_relation_loss(
        logits, targets, teacher_logits, class_weights)
  elif gsc.relation and gsc.relation_form == "temperature":
    terms["temperature_kd"] = gsc.temperature_kd_weight * losses.temperature_distillation(
        logits, teacher_logits, gsc.soft_temperature, gsc.sharp_temperature)
  elif gsc.relation:
    raise errors.InputError(f"unknown gsc.relation_form {gsc.relation_form!r}; "
                     "valid: soft_sharp, temperature")
  return terms

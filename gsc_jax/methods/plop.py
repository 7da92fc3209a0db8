"""PLOP (Douillard et al., CVPR 2021; docs/algorithm.md 4).

Loss at step t > 0: the cross-entropy on entropy pseudo-labels, each image's pixels
weighted by nu, plus Local POD. Before the step, one pass of the teacher over the step's
training images gives a per-old-class entropy threshold for every epoch of the step
(``threshold_pass``); during the step, a pixel labelled background takes the teacher's
class when the teacher's entropy is below that class's threshold, and is ignored otherwise.
PLOP uses the median at every epoch; GSC's base (FISS) a quantile rising with the epoch.
"""

import jax.numpy as jnp
import numpy as np

from gsc_jax import losses
from gsc_jax import pseudo_labels
from gsc_jax import rules
from gsc_jax.methods import base

_POD = ("loss.pod_weight", "loss.pod_logits_weight")
_QUANTILE = rules.Number(float, above=0.0, maximum=1.0)
SWITCHES = {
    "loss.pod_weight": base.Switch(0.0, rules.NON_NEGATIVE,
                                   "Local POD weight of the 4 stage + head tensors"),
    "loss.pod_logits_weight": base.Switch(0.0, rules.NON_NEGATIVE,
                                          "Local POD weight of the logits"),
    "pseudo.entropy": base.Switch(False, rules.Flag(), "entropy pseudo-labels of the old "
                                  "classes hidden in the background", domain_tasks=False),
}
OPTIONS = {
    "loss.pod_scales": base.Option((1, 2, 4), rules.PositiveIntegers(),
                                   "tile grids of the local embedding", read_with=_POD),
    "pseudo.thresholds": base.Option(
        "histogram", rules.Choice(("histogram", "median")),
        "histogram (PLOP's released code) | median (the exact quantile)",
        read_with=("pseudo.entropy",)),
    "pseudo.threshold_floor": base.Option(0.001, rules.FRACTION, "every per-class entropy "
                                          "threshold is at least this",
                                          read_with=("pseudo.entropy",)),
    # Epoch e's threshold quantile: min(start + per_epoch * e, max); PLOP the median at every
    # epoch, GSC FISS's rising quantile (its preset).
    "pseudo.quantile_start": base.Option(0.5, _QUANTILE, "threshold quantile of epoch 0",
                                         read_with=("pseudo.entropy",), preset=True),
    "pseudo.quantile_per_epoch": base.Option(0.0, rules.NON_NEGATIVE, "its rise per epoch",
                                             read_with=("pseudo.entropy",), preset=True),
    "pseudo.quantile_max": base.Option(0.5, _QUANTILE, "its cap",
                                       read_with=("pseudo.entropy",), preset=True),
    "pseudo.adaptive_factor": base.Option(True, rules.Flag(), "weight each image's CE by nu "
                                          "(accepted / background pixels)",
                                          read_with=("pseudo.entropy",)),
}
PRESET = {"loss.pod_weight": 0.01, "loss.pod_logits_weight": 0.0005, "pseudo.entropy": True,
          # The half-count at every epoch (docs/algorithm.md 4).
          "pseudo.quantile_start": 0.5, "pseudo.quantile_per_epoch": 0.0,
          "pseudo.quantile_max": 0.5}
PUBLISHED = {
    ("voc", "10-1"): {"optim.epochs_incremental": 10},  # PLOP's scripts/voc/plop_10-1.sh
    ("ade", "*"): {"loss.pod_weight": 0.001, "loss.pod_logits_weight": 0.00001},
}


def config_problems(config) -> list[str]:
  """Rules between this module's fields."""
  pseudo = config.pseudo
  if pseudo.quantile_start > pseudo.quantile_max:
    return [f"pseudo.quantile_start={pseudo.quantile_start} is above "
            f"pseudo.quantile_max={pseudo.quantile_max}"]
  return []


def epoch_quantiles(config) -> list[float]:
  """The threshold quantile of every epoch of an incremental step,
  ``min(quantile_start + quantile_per_epoch * e, quantile_max)``."""
  pseudo = config.pseudo
  return [pseudo_labels.quantile_of_epoch(epoch, pseudo.quantile_start,
                                          pseudo.quantile_per_epoch, pseudo.quantile_max)
          for epoch in range(config.optim.epochs_incremental)]


def threshold_pass(config, facts, teacher_model) -> base.DataPass:
  """The per-epoch, per-old-class entropy thresholds [epochs, K_old] from the teacher on
  one epoch of the step's augmented training batches, as PLOP's ``find_median`` reads its
  train loader: the released code's histogram procedure (``pseudo.thresholds=histogram``)
  or the exact quantile (``median``), at each epoch's quantile (``epoch_quantiles``),
  floored at ``pseudo.threshold_floor``. One pass serves every epoch: FISS recomputes the
  histogram before each epoch, over that epoch's random crops; here the crops of one
  epoch stand for all of them."""
  mode, floor = config.pseudo.thresholds, config.pseudo.threshold_floor
  num_classes, num_old_classes = facts.num_classes, facts.num_old_classes
  quantiles = epoch_quantiles(config)

  def batch_statistics(variables, frozen, batch):
    del frozen
    logits = teacher_model.apply(variables, batch["image"], train=False)["logits"]
    labels = batch["label"].astype(jnp.int32)
    if mode == "histogram":
      return pseudo_labels.entropy_histogram(labels, logits, num_classes)
    return (pseudo_labels.normalized_entropy(logits, num_classes),
            jnp.argmax(logits, axis=-1), labels == 0)

  def finish(results, previous):
    del previous
    # Once per distinct quantile: a capped rising quantile repeats its last value.
    if mode == "histogram":
      histogram = np.sum([np.asarray(r, np.int64) for r in results], axis=0)
      per_quantile = {quantile: pseudo_labels.histogram_thresholds(histogram, floor, quantile)
                      for quantile in set(quantiles)}
    else:
      entropies = np.concatenate([entropy[background] for entropy, _, background in results])
      argmaxes = np.concatenate([argmax[background] for _, argmax, background in results])
      per_quantile = {quantile: pseudo_labels.median_thresholds(
          entropies, argmaxes, num_old_classes, floor, quantile) for quantile in set(quantiles)}
    return {"thresholds": np.asarray([per_quantile[q] for q in quantiles], np.float32)}

  return base.DataPass("entropy_thresholds", batch_statistics, finish, augmented=True)


def thresholds_of_epoch(frozen, epoch):
  """The epoch's row of ``frozen["thresholds"]`` [epochs, K_old] (the last row after it)."""
  thresholds = frozen["thresholds"]
  return thresholds[jnp.minimum(epoch, thresholds.shape[0] - 1)]


def entropy_targets(config, facts):
  """``training_targets`` with PLOP's entropy pseudo-labels
  (``pseudo_labels.entropy_pseudo_labels``) at the epoch's thresholds and, with
  ``pseudo.adaptive_factor``, the per-image nu = accepted background pixels / background
  pixels."""
  num_classes, adaptive = facts.num_classes, config.pseudo.adaptive_factor

  def training_targets(labels, teacher_outputs, frozen, epoch):
    targets, nu, _ = pseudo_labels.entropy_pseudo_labels(
        labels, teacher_outputs["logits"], thresholds_of_epoch(frozen, epoch), num_classes)
    return targets, nu if adaptive else jnp.ones_like(nu)

  return training_targets


def pod_term(config, facts):
  """``outputs, teacher_outputs -> Local POD`` (``losses.local_pod``), or None when both
  POD weights are 0."""
  loss = config.loss
  if loss.pod_weight == 0 and loss.pod_logits_weight == 0:
    return None
  scales = tuple(loss.pod_scales)

  def pod(outputs, teacher_outputs):
    return losses.local_pod(outputs, teacher_outputs, facts.num_old_classes,
                            facts.num_new_classes, loss.pod_weight, loss.pod_logits_weight,
                            scales)

  return pod


def build(config, facts, model, teacher_model) -> base.Method:
  del model
  pod = pod_term(config, facts)

  def other_terms(outputs, targets, teacher_outputs, transform_state):
    del targets, transform_state
    return {} if pod is None else {"pod": pod(outputs, teacher_outputs)}

  if not config.pseudo.entropy:
    return base.Method(other_terms=other_terms)
  return base.Method(training_targets=entropy_targets(config, facts), other_terms=other_terms,
                     before_step=(threshold_pass(config, facts, teacher_model),),
                     reports_nu=True)

"""MiB (Cermelli et al., CVPR 2020; docs/algorithm.md 3).

Loss at step t > 0: ``unbiased CE + loss.kd_weight * unbiased distillation``. The unbiased
CE scores a background pixel by the total probability of background and every old class;
the distillation compares the teacher's old-class distribution with the student's, whose
background absorbs the new classes. New classifiers get MiB's initialisation, and VOC's
void is trained as background, as MiB's code does.
"""

from gsc_jax import losses
from gsc_jax import rules
from gsc_jax.methods import base

SWITCHES = {
    "loss.ce": base.Switch("plain", rules.Choice(("plain", "unbiased")),
                           "classification loss: plain CE | unbiased CE (background absorbs "
                           "the old classes)"),
    "loss.kd_weight": base.Switch(0.0, rules.NON_NEGATIVE, "unbiased distillation weight"),
}
OPTIONS = {
    "loss.kd_alpha": base.Option(1.0, rules.POSITIVE, "teacher logit scaling in the unbiased "
                                 "distillation", read_with=("loss.kd_weight",)),
}
PRESET = {"loss.ce": "unbiased", "loss.kd_weight": 10.0, "data.void_to_background": True}
# The maintainers state that 15-1 (their "15-5s") was run with a distillation weight of 100.
PUBLISHED = {("voc", "15-1"): {"loss.kd_weight": 100.0}}


def build(config, facts, model, teacher_model) -> base.Method:
  del model, teacher_model
  num_old_classes = facts.num_old_classes
  unbiased = config.loss.ce == "unbiased" and facts.num_new_classes > 0
  kd_weight, kd_alpha = config.loss.kd_weight, config.loss.kd_alpha

  def classification_loss(logits, targets, nu):
    """Unbiased CE (``losses.unbiased_cross_entropy``); without new classes (a domain
    step) or with ``loss.ce=plain`` the plain CE."""
    if unbiased:
      return losses.unbiased_cross_entropy(logits, targets, num_old_classes)
    return base.nu_weighted_cross_entropy(logits, targets, nu)

  def other_terms(outputs, targets, teacher_outputs, transform_state):
    del targets, transform_state
    if kd_weight == 0:
      return {}
    return {"kd": kd_weight * losses.unbiased_distillation(
        outputs["logits"], teacher_outputs["logits"], kd_alpha)}

  return base.Method(classification_loss=classification_loss, other_terms=other_terms)

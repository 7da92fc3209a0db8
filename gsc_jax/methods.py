"""Methods as small compositions of named losses, and the presets that pick them.

A preset only fills config fields the user left unset (``None``); an explicit value, from
the config file, the ``,key=value`` argument or a ``--config.x=y`` flag, always wins.

- ``ft``: plain cross-entropy on the step's labels; new classifiers randomly initialised.
  The lower bound (and, on the ``offline`` task, joint training: the upper bound).
- ``mib``: unbiased cross-entropy + ``kd_weight`` x unbiased distillation, MiB
  initialisation of new classifiers, VOC void turned into background as MiB's code does.
"""

import ml_collections

from gsc_jax import losses

PRESETS = {
    "ft": {
        "loss.ce": "plain",
        "loss.kd_weight": 0.0,
        "model.new_classifier_init": "random",
        "data.void_to_background": False,
    },
    "mib": {
        "loss.ce": "unbiased",
        "loss.kd_weight": 10.0,
        "model.new_classifier_init": "mib",
        "data.void_to_background": True,
    },
}


def resolve_preset(config: ml_collections.ConfigDict) -> list[str]:
  """Fills the unset (None) fields from ``config.method``'s preset; returns what it filled."""
  if config.method not in PRESETS:
    raise ValueError(
        f"unknown method {config.method!r}; valid methods: {', '.join(sorted(PRESETS))}")
  filled = []
  for path, value in PRESETS[config.method].items():
    section, field = path.split(".")
    if config[section][field] is None:
      config[section][field] = value
      filled.append(f"{path}={value}")
  return filled


def loss_terms(outputs, labels, teacher_outputs, loss_config, num_old_classes):
  """The method's loss terms for one batch: a dict name -> (weighted) scalar.

  ``outputs`` / ``teacher_outputs`` are the model output dicts (``teacher_outputs`` is None
  at step 0). Their sum is the training objective.
  """
  logits = outputs["logits"]
  terms = {}
  if loss_config.ce == "unbiased" and num_old_classes > 0:
    terms["ce"] = losses.unbiased_cross_entropy(logits, labels, num_old_classes)
  elif loss_config.ce in ("plain", "unbiased"):
    terms["ce"] = losses.cross_entropy(logits, labels)
  else:
    raise ValueError(f"unknown loss.ce {loss_config.ce!r}; valid: plain, unbiased")
  if teacher_outputs is not None and loss_config.kd_weight > 0:
    terms["kd"] = loss_config.kd_weight * losses.unbiased_distillation(
        logits, teacher_outputs["logits"], loss_config.kd_alpha)
  return terms

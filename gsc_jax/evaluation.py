"""Evaluation: one confusion matrix over a step's whole test split (docs/algorithm.md 1.8),
and the predictions drawn in the end-of-step picture, from one compiled function."""

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import metrics


def make_eval_step(model, num_channels: int):
  """``eval_step(variables, batch) -> (confusion [K, K], predicted channels [B, H, W])``,
  jitted; pixels labelled outside [0, K) are left out of the confusion matrix (rows:
  ground-truth channel)."""

  @jax.jit
  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)["logits"]
    predictions = jnp.argmax(logits, axis=-1)
    return (metrics.confusion_matrix(batch["label"].astype(jnp.int32), predictions,
                                     num_channels), predictions)

  return eval_step


def confusion_matrix(eval_step, variables, batches, num_channels: int) -> np.ndarray:
  """The confusion matrix summed over ``batches`` (global arrays)."""
  confusion = np.zeros((num_channels, num_channels), np.int64)
  for batch in batches:
    confusion += np.asarray(jax.device_get(eval_step(variables, batch)[0]), np.int64)
  return confusion

"""The train step as specified (gsc_jax/train_step.py): the vjp-split gradient is the
gradient of the total loss with GSC's compensation weights held constant, the teacher's
variables are never changed, and a non-finite loss is flagged on the device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import synthetic
from gsc_jax import methods
from gsc_jax import tasks
from gsc_jax import train_step as train_step_lib
from gsc_jax.methods import gsc
from gsc_jax.models import step_model

pytestmark = pytest.mark.slow  # end-to-end runs and compiles: left out of -m "not slow"

SIZE, BATCH = 32, 2


def _setup(extra=""):
  """GSC at step 1 of 2-1 (K_old = 3, K = 4) on a tiny random model, with fixed targets."""
  config = synthetic.get_config(
      f"2-1,method=gsc,model.backbone=resnet_tiny,model.head_channels=8,"
      f"data.crop_size={SIZE}{extra}")
  methods.resolve_preset(config)
  facts = tasks.step_facts(tasks.task_of(config), 1)
  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
  images = jax.random.normal(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  teacher_variables = teacher_model.init(jax.random.key(1), images, train=False)
  variables = model.init(jax.random.key(2), images, train=False)
  rng = np.random.default_rng(0)
  # Pseudo-labelled targets: every old class, the new class 3 and void, fixed so that the
  # check does not depend on where a threshold falls.
  targets = jnp.asarray(rng.choice([0, 1, 2, 3, 255], size=(BATCH, SIZE, SIZE)), jnp.int32)
  nu = jnp.asarray([0.7, 0.4], jnp.float32)
  method = methods.build(config, facts, model, teacher_model)._replace(
      training_targets=lambda labels, teacher_outputs, frozen, epoch: (targets, nu))
  batch = {"image": images, "label": targets}
  frozen = {"teacher": teacher_variables}
  return config, facts, model, teacher_model, method, variables, frozen, batch, targets, nu


FIRST_RECONSTRUCTION = "".join(f",{key}={value}" for key, value in
                               gsc.FIRST_RECONSTRUCTION.items())


@pytest.mark.parametrize("extra", [",gsc.class_relation=fiss", FIRST_RECONSTRUCTION],
                         ids=["second_with_class_relation", "first_reconstruction"])
def test_split_gradient_is_the_total_loss_gradient_with_weights_held_constant(extra):
  config, facts, model, teacher_model, method, variables, frozen, batch, targets, nu = _setup(
      extra)
  optimizer = optax.sgd(0.0)
  state = train_step_lib.create_train_state(variables, optimizer, method)
  loss_gradients = jax.jit(train_step_lib.make_loss_gradients(model, teacher_model, method, 10))
  gradients, _, transform_state, scalars = loss_gradients(state, frozen, batch)
  assert {"ce", "pod", "soft_label", "sharpening", "relation"} <= set(scalars)

  _, weights_of = gsc.compensation_transform(config, facts)
  teacher_outputs = teacher_model.apply(frozen["teacher"], batch["image"], train=False)

  def student_outputs(params):
    outputs, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             batch["image"], train=True, mutable=["batch_stats"])
    return outputs

  def total_loss(params):
    """The documented total: mean over all pixels of w_i * nu_b * CE_i, plus every other
    term; the weights w_i are constants computed from the current logits."""
    outputs = student_outputs(params)
    logits = outputs["logits"]
    weights = jax.lax.stop_gradient(weights_of(transform_state, targets, logits))
    valid = targets != 255
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits),
                                 jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.mean(jnp.where(valid, -weights * nu[:, None, None] * picked, 0.0))
    other = method.other_terms(outputs, targets, teacher_outputs, transform_state)
    return ce + sum(other.values())

  # The class relation term reads the student's argmax: make sure no pixel is near a tie,
  # so that both computations see the same predicted classes on any CPU.
  top_two = jax.lax.top_k(student_outputs(variables["params"])["logits"], 2)[0]
  assert float(jnp.min(top_two[..., 0] - top_two[..., 1])) > 1e-4
  expected = jax.jit(jax.grad(total_loss))(variables["params"])
  # One float32 computation split into vjp pieces vs one jax.grad: the sums run in other
  # orders, so they agree to float32 rounding (measured: at most 1e-5 of the largest
  # gradient). The absolute part is relative to the largest gradient of the model, since
  # some tensors' gradients cancel to nearly 0 by construction (the image-pool branch
  # feeds a BatchNorm over 2 pooled values) and keep only rounding noise.
  scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(expected))
  wanted = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  compared = 0
  for path, got in jax.tree_util.tree_flatten_with_path(gradients)[0]:
    np.testing.assert_allclose(np.asarray(got), np.asarray(wanted[path]), rtol=1e-4,
                               atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))
    compared += 1
  assert compared > 20
  # The weights are not all 1, so the check would catch a missing compensation.
  weights = weights_of(transform_state, targets, student_outputs(variables["params"])["logits"])
  assert float(jnp.std(jnp.where(targets < 3, weights, 1.0))) > 1e-3


def test_step_never_changes_the_teacher_and_flags_non_finite_losses():
  _, _, model, teacher_model, method, variables, frozen, batch, _, _ = _setup()
  optimizer = optax.sgd(0.1)
  train_step = jax.jit(train_step_lib.make_train_step(model, teacher_model, method, optimizer, 10),
                       donate_argnums=(0,))
  teacher_before = jax.tree.map(np.array, frozen["teacher"])
  state = train_step_lib.create_train_state(variables, optimizer, method)
  state, scalars = train_step(state, frozen, batch)
  for before, after in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(frozen["teacher"])):
    np.testing.assert_array_equal(before, np.asarray(after))
  assert np.all(np.asarray(scalars["finite"]))
  assert int(state["iteration"]) == 1
  names = train_step_lib.checked_names(scalars)
  assert {"loss", "ce", "gradient_norm", "group_means"} <= set(names)

  poisoned = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
  _, scalars = train_step(state, frozen, poisoned)
  finite = dict(zip(names, np.asarray(scalars["finite"])))
  assert not finite["loss"] and not finite["gradient_norm"]

"""The train step of one incremental step: a pure function, generic over the method.

``make_train_step(model, teacher_model, method, optimizer, iterations_per_epoch)`` returns
``train_step(state, frozen, batch) -> (state, scalars)`` (docs/gsc_step.md walks through
one GSC iteration):

1. teacher forward (inference mode, stop-gradient); the method's training targets and
   per-image nu;
2. ``jax.vjp`` of the model gives the outputs and a pullback into the parameters;
3. the classification loss's gradient with respect to the LOGITS, explicitly; a method
   with a logit-gradient transform (GSC's compensation, an optax transform) rescales it;
4. every other term (distillation, POD, relation) is differentiated with respect to the
   outputs it reads; its cotangents are added to the classification loss's;
5. one pullback of the summed cotangents gives the parameter gradients; SGD updates.

Every scalar it returns, the gradient's global norm included, is also checked for being
finite on the device: ``scalars["finite"]`` holds one flag per name of
``checked_names(scalars)``, so the driver can stop a diverging run without a host
round-trip per loss term.
"""

import jax
import jax.numpy as jnp
import optax

from gsc_jax.methods import base


def make_optimizer(optim_config, base_learning_rate: float, max_iterations: int):
  """SGD, Nesterov momentum, weight decay added to the gradient before momentum (PyTorch
  semantics), poly schedule ``lr = base * (1 - it / max_it) ** power`` (docs/algorithm.md
  1.6)."""
  schedule = optax.polynomial_schedule(
      init_value=base_learning_rate, end_value=0.0, power=optim_config.poly_power,
      transition_steps=max_iterations)
  optimizer = optax.chain(
      optax.add_decayed_weights(optim_config.weight_decay),
      optax.sgd(schedule, momentum=optim_config.momentum, nesterov=optim_config.nesterov))
  return optimizer, schedule


def create_train_state(variables, optimizer, method: base.Method) -> dict:
  """Iteration, parameters, batch statistics, optimiser state and, for a method with a
  logit-gradient transform, its state: everything a checkpoint holds to resume exactly."""
  state = {"iteration": jnp.zeros((), jnp.int32), "params": variables["params"],
           "batch_stats": variables["batch_stats"],
           "opt_state": optimizer.init(variables["params"])}
  if method.logit_gradient_transform is not None:
    state["gradient_transform"] = method.logit_gradient_transform.init(None)
  return state


def checked_names(scalars: dict) -> list[str]:
  """The names whose finiteness ``scalars["finite"]`` reports, in its order."""
  return sorted(name for name in scalars if name != "finite")


def make_loss_gradients(model, teacher_model, method: base.Method, iterations_per_epoch: int):
  """``loss_gradients(state, frozen, batch) -> (param_gradients, batch_stats,
  transform_state, scalars)``: steps 1-5 of the module docstring without the update.
  ``teacher_model`` is None at step 0."""

  def loss_gradients(state, frozen, batch):
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    teacher_outputs = None
    if teacher_model is not None:
      teacher_outputs = jax.lax.stop_gradient(
          teacher_model.apply(frozen["teacher"], images, train=False))
    epoch = state["iteration"] // iterations_per_epoch
    targets, nu = method.training_targets(labels, teacher_outputs, frozen, epoch)

    def forward(params):
      outputs, updated = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
          mutable=["batch_stats"])
      return outputs, updated["batch_stats"]

    outputs, pullback, batch_stats = jax.vjp(forward, state["params"], has_aux=True)
    ce_loss, ce_logit_gradients = jax.value_and_grad(method.classification_loss)(
        outputs["logits"], targets, nu)
    transform_state = None
    if method.logit_gradient_transform is not None:
      ce_logit_gradients, transform_state = method.logit_gradient_transform.update(
          ce_logit_gradients, state["gradient_transform"], targets=targets,
          logits=jax.lax.stop_gradient(outputs["logits"]))

    def other_terms(outputs):
      terms = method.other_terms(outputs, targets, teacher_outputs, transform_state)
      return sum(terms.values(), jnp.zeros(())), terms

    (other_loss, terms), cotangents = jax.value_and_grad(other_terms, has_aux=True)(outputs)
    cotangents["logits"] = cotangents["logits"] + ce_logit_gradients
    (param_gradients,) = pullback(cotangents)
    scalars = {"loss": ce_loss + other_loss, "ce": ce_loss, **terms,
               "gradient_norm": optax.global_norm(param_gradients)}
    if method.reports_nu:
      scalars["nu"] = jnp.mean(nu)
    if transform_state is not None:
      scalars.update(method.transform_scalars(transform_state))
    return param_gradients, batch_stats, transform_state, scalars

  return loss_gradients


def make_train_step(model, teacher_model, method: base.Method, optimizer,
                    iterations_per_epoch: int):
  """The pure train step (module docstring). ``teacher_model`` is None at step 0;
  ``iterations_per_epoch`` gives the epoch the method's targets may depend on."""
  loss_gradients = make_loss_gradients(model, teacher_model, method, iterations_per_epoch)

  def train_step(state, frozen, batch):
    param_gradients, batch_stats, transform_state, scalars = loss_gradients(
        state, frozen, batch)
    updates, opt_state = optimizer.update(param_gradients, state["opt_state"], state["params"])
    new_state = {**state, "iteration": state["iteration"] + 1,
                 "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    if transform_state is not None:
      new_state["gradient_transform"] = transform_state
    scalars["finite"] = jnp.stack([jnp.all(jnp.isfinite(scalars[name]))
                                   for name in checked_names(scalars)])
    return new_state, scalars

  return train_step

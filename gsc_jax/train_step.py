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

Gradient accumulation (``optim.accumulation_steps = k``, docs/precision_and_accumulation.md):
steps 1-5 run on k micro-batches of the global batch in turn (``jax.lax.scan``: the memory
of one micro-batch), micro-batch j being the rows i with ``i mod k == j`` so that each one
is spread over every device of the "data" mesh; the parameter gradients are averaged and
ONE optimiser update is applied (one iteration, one schedule step). Per micro-batch: BN's
batch statistics in the forward pass ("ghost" BN), the normalisations of the losses and a
logit-gradient transform (its state threaded through the micro-batches in order). The BN
running averages are updated once, exactly as for the whole batch
(``resnet.pooled_running_averages``). k = 1 is the plain step.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gsc_jax.methods import base
from gsc_jax.models import resnet


class Optimizer(NamedTuple):
  """An optax transformation (``init``, ``update``) and how many micro-batches' averaged
  gradients make one of its updates (``optim.accumulation_steps``; ``make_train_step``
  reads it)."""
  init: Callable
  update: Callable
  accumulation_steps: int = 1


def make_optimizer(optim_config, base_learning_rate: float, max_iterations: int):
  """SGD, Nesterov momentum, weight decay added to the gradient before momentum (PyTorch
  semantics), poly schedule ``lr = base * (1 - it / max_it) ** power`` (docs/algorithm.md
  1.6). Returns ``(Optimizer, schedule)``; the optimiser carries
  ``optim.accumulation_steps`` (schedule and iterations count updates, not micro-batches)."""
  schedule = optax.polynomial_schedule(
      init_value=base_learning_rate, end_value=0.0, power=optim_config.poly_power,
      transition_steps=max_iterations)
  transformation = optax.chain(
      optax.add_decayed_weights(optim_config.weight_decay),
      optax.sgd(schedule, momentum=optim_config.momentum, nesterov=optim_config.nesterov))
  accumulation_steps = int(optim_config.accumulation_steps)
  return Optimizer(transformation.init, transformation.update, accumulation_steps), schedule


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


def micro_batches(batch: dict, accumulation_steps: int) -> dict:
  """``[B, ...] -> [k, B / k, ...]`` per array: micro-batch j holds the rows i with
  ``i mod k == j``, in order. The global batch is sharded over the "data" mesh in
  contiguous blocks of rows, so (with B divisible by k x devices) every micro-batch keeps
  B / (k x devices) rows on each device: no data moves between devices."""

  def split(array):
    rows = array.shape[0]
    if rows % accumulation_steps:
      raise ValueError(f"a batch of {rows} rows does not split into {accumulation_steps} "
                       "micro-batches")
    grouped = array.reshape(rows // accumulation_steps, accumulation_steps, *array.shape[1:])
    return jnp.swapaxes(grouped, 0, 1)

  return jax.tree.map(split, batch)


def make_accumulated_loss_gradients(model, teacher_model, method: base.Method,
                                    iterations_per_epoch: int, accumulation_steps: int):
  """``loss_gradients`` (same signature and results as ``make_loss_gradients``'s) over k
  micro-batches (``micro_batches``) under ``jax.lax.scan``:

  - parameter gradients: the mean of the micro-batches' gradients (each the plain
    ``make_loss_gradients`` gradient of its micro-batch);
  - BN running averages: each micro-batch's forward is given zero running averages (train
    mode only writes them) and ``resnet.pooled_running_averages`` combines the k results
    with the old averages: the update of one batch with the pooled mean and variance;
  - logit-gradient transform: applied per micro-batch, its state carried from one
    micro-batch to the next; the state after the last one is returned;
  - scalars: the mean over micro-batches of each, except ``gradient_norm`` (of the averaged
    gradient) and the transform's (of the returned state).
  """
  loss_gradients = make_loss_gradients(model, teacher_model, method, iterations_per_epoch)

  def accumulated(state, frozen, batch):
    zero_statistics = jax.tree.map(jnp.zeros_like, state["batch_stats"])

    def micro_step(carry, micro_batch):
      gradient_sum, transform_state = carry
      micro_state = {**state, "batch_stats": zero_statistics}
      if transform_state is not None:
        micro_state["gradient_transform"] = transform_state
      gradients, statistics, transform_state, scalars = loss_gradients(
          micro_state, frozen, micro_batch)
      gradient_sum = jax.tree.map(jnp.add, gradient_sum, gradients)
      return (gradient_sum, transform_state), (statistics, scalars)

    initial = (jax.tree.map(jnp.zeros_like, state["params"]),
               state.get("gradient_transform"))
    (gradient_sum, transform_state), (statistics, scalars) = jax.lax.scan(
        micro_step, initial, micro_batches(batch, accumulation_steps))
    gradients = jax.tree.map(lambda total: total / accumulation_steps, gradient_sum)
    batch_stats = resnet.pooled_running_averages(state["batch_stats"], statistics)
    scalars = jax.tree.map(lambda values: jnp.mean(values, axis=0), scalars)
    scalars["gradient_norm"] = optax.global_norm(gradients)
    if transform_state is not None:
      scalars.update(method.transform_scalars(transform_state))
    return gradients, batch_stats, transform_state, scalars

  return accumulated


def make_train_step(model, teacher_model, method: base.Method, optimizer,
                    iterations_per_epoch: int, accumulation_steps: int | None = None):
  """The pure train step (module docstring). ``teacher_model`` is None at step 0;
  ``iterations_per_epoch`` gives the epoch the method's targets may depend on;
  ``accumulation_steps`` (default: the optimiser's, see ``Optimizer``, else 1) the number of
  micro-batches per update."""
  if accumulation_steps is None:
    accumulation_steps = getattr(optimizer, "accumulation_steps", 1)
  if accumulation_steps < 1:
    raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
  if accumulation_steps == 1:
    loss_gradients = make_loss_gradients(model, teacher_model, method, iterations_per_epoch)
  else:
    loss_gradients = make_accumulated_loss_gradients(
        model, teacher_model, method, iterations_per_epoch, accumulation_steps)

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

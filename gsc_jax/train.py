"""The incremental driver: every step of a task, readable top to bottom.

Sections: mesh and sharding / model and optimiser / the train step / evaluation / one
incremental step (input, state, loop, checkpoint, export) / the whole task.

One incremental step t:
  1. the step's image lists (ALGORITHM.md 1.2) and label transforms (1.3);
  2. the model for the classes seen so far; at t > 0 its variables are grown from step
     t-1's export (new classifier initialised per the method), and that export, unchanged,
     is the frozen teacher passed INTO the train step;
  3. a fresh SGD optimiser with the step's learning rate and poly schedule (1.6);
  4. the jitted train step over a 1-D "data" mesh (batch sharded, state replicated);
  5. periodic checkpoints of train state + input iterator (exact resume);
  6. the export of the final model, then evaluation on the step's test split (1.8).
"""

import functools
import json
import os
import shutil
import time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from gsc_jax import checkpoint
from gsc_jax import compensation
from gsc_jax import methods
from gsc_jax import metrics
from gsc_jax import pseudo_labels
from gsc_jax import tasks
from gsc_jax.data import pipeline
from gsc_jax.data import splits
from gsc_jax.models import convert
from gsc_jax.models import deeplab
from gsc_jax.models import incremental
from gsc_jax import errors


class InterruptedRun(Exception):
  """Raised when ``stop_after_iterations`` is reached (used to test resuming)."""


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def append_jsonl(workdir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "log.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")


# --- mesh and sharding ---------------------------------------------------------------------

def make_mesh() -> jax.sharding.Mesh:
  """A 1-D "data" mesh over every device of every process (Auto axis: see STACK.md)."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh):
  return NamedSharding(mesh, PartitionSpec("data"))


def global_batches(dataset, num_batches: int, mesh):
  """The first ``num_batches`` batches of ``dataset`` as global arrays."""
  iterator = iter(dataset)
  for _ in range(num_batches):
    yield to_global_batch(next(iterator), mesh)


def to_global_batch(local_batch: dict, mesh) -> dict:
  """This process's rows -> one global array per key, sharded over the batch axis."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()}


# --- model and optimiser -------------------------------------------------------------------

def make_model(config, classes_per_step) -> deeplab.DeepLabV3:
  """The DeepLabV3 of a step; a step without new classes (domain-incremental) adds no
  classifier."""
  return deeplab.DeepLabV3(
      classes_per_step=tuple(c for c in classes_per_step if c), backbone=config.model.backbone,
      output_stride=config.model.output_stride, head_channels=config.model.head_channels,
      activation=config.model.activation)


def make_optimizer(optim_config, base_learning_rate: float, max_iterations: int):
  """SGD, Nesterov momentum, weight decay added to the gradient before momentum (PyTorch
  semantics), poly schedule ``lr = base * (1 - it / max_it) ** power`` (ALGORITHM.md 1.6)."""
  schedule = optax.polynomial_schedule(
      init_value=base_learning_rate, end_value=0.0, power=optim_config.poly_power,
      transition_steps=max_iterations)
  optimizer = optax.chain(
      optax.add_decayed_weights(optim_config.weight_decay),
      optax.sgd(schedule, momentum=optim_config.momentum, nesterov=optim_config.nesterov))
  return optimizer, schedule


def dummy_images(config):
  size = config.data.crop_size
  return jnp.zeros((1, size, size, 3), jnp.float32)


# --- the train step ------------------------------------------------------------------------

def create_train_state(variables, optimizer, compensator=None) -> dict:
  """Iteration, parameters, batch statistics, optimiser state and, with GSC's compensation,
  its state (the group means): everything a checkpoint must hold to resume exactly."""
  state = {"iteration": jnp.zeros((), jnp.int32), "params": variables["params"],
           "batch_stats": variables["batch_stats"],
           "opt_state": optimizer.init(variables["params"])}
  if compensator is not None:
    state["compensation"] = compensator.init(None)
  return state


def make_train_step(model, teacher_model, optimizer, config, classes_per_step):
  """Builds the pure train step of one incremental step (docs/gsc_step.md walks through it).

  ``train_step(state, frozen, batch) -> (state, scalars)``. ``frozen`` holds what the step
  reads but never changes: the teacher's variables (run in inference mode, never
  differentiated), PLOP's entropy thresholds and GSC's prototypes.

  1. teacher forward; the targets: pseudo-labels and per-image nu (methods.training_targets);
  2. ``jax.vjp`` of the model gives the outputs and a pullback into the parameters;
  3. the cross-entropy's gradient with respect to the LOGITS, explicitly; with GSC, the
     compensation transform (an optax GradientTransformation) rescales it per pixel;
  4. every other term (distillation, POD, relation) is differentiated with respect to the
     outputs it reads; its cotangents are added to the cross-entropy's;
  5. one pullback of the summed cotangents gives the parameter gradients; SGD updates.
  """
  num_classes = sum(classes_per_step)
  num_new_classes = classes_per_step[-1]
  num_old_classes = num_classes - num_new_classes if teacher_model is not None else 0
  compensator = compensation_weights = None
  if teacher_model is not None and config.gsc.compensation:
    if config.loss.ce != "plain":
      raise errors.InputError("gsc.compensation scales the gradients of the plain cross-entropy on "
                       f"the (pseudo-)labels; it cannot be used with loss.ce={config.loss.ce}")
    groups, is_current_group = compensation.group_of_channel(classes_per_step,
                                                             config.gsc.groups)
    exponent = num_old_classes / num_classes if config.gsc.use_exponent else 1.0
    compensator, compensation_weights = compensation.gradient_compensation(
        groups, is_current_group, exponent, config.gsc.ema_decay)

  def train_step(state, frozen, batch):
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    teacher_outputs = None
    if teacher_model is not None:
      teacher_outputs = jax.lax.stop_gradient(
          teacher_model.apply(frozen["teacher"], images, train=False))
    targets, nu = methods.training_targets(labels, teacher_outputs, frozen, config,
                                           num_classes)

    def forward(params):
      outputs, updated = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
          mutable=["batch_stats"])
      return outputs, updated["batch_stats"]

    outputs, pullback, batch_stats = jax.vjp(forward, state["params"], has_aux=True)
    ce_loss, ce_logit_gradients = jax.value_and_grad(methods.classification_loss)(
        outputs["logits"], targets, nu, config.loss, num_old_classes)
    new_state = dict(state)
    class_weights = jnp.ones(num_old_classes, jnp.float32)
    if compensator is not None:
      probabilities = compensation.class_probabilities(
          jax.lax.stop_gradient(outputs["logits"]), config.gsc.magnitude)
      ce_logit_gradients, new_state["compensation"] = compensator.update(
          ce_logit_gradients, state["compensation"], targets=targets,
          probabilities=probabilities)
      if config.gsc.relation:  # the class relation term weights classes by their mean w
        class_weights = methods.mean_weight_per_class(
            targets, compensation_weights(new_state["compensation"], targets, probabilities),
            num_old_classes)

    def other_terms(outputs):
      terms = methods.distillation_terms(outputs, targets, teacher_outputs, class_weights,
                                         config, num_old_classes, num_new_classes)
      return sum(terms.values(), jnp.zeros(())), terms

    (other_loss, terms), cotangents = jax.value_and_grad(other_terms, has_aux=True)(outputs)
    cotangents["logits"] = cotangents["logits"] + ce_logit_gradients
    (param_gradients,) = pullback(cotangents)
    updates, opt_state = optimizer.update(param_gradients, state["opt_state"], state["params"])
    new_state.update(iteration=state["iteration"] + 1,
                     params=optax.apply_updates(state["params"], updates),
                     batch_stats=batch_stats, opt_state=opt_state)
    scalars = {"loss": ce_loss + other_loss, "ce": ce_loss, **terms}
    if teacher_model is not None and methods.uses_pseudo_labels(config):
      scalars["nu"] = jnp.mean(nu)
    return new_state, scalars

  return train_step, compensator


# --- evaluation ----------------------------------------------------------------------------

def evaluate(model, variables, dataset, num_batches: int, num_channels: int, mesh) -> np.ndarray:
  """Confusion matrix [K, K] (rows: ground truth channel) over the whole test split."""

  @jax.jit
  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)["logits"]
    predictions = jnp.argmax(logits, axis=-1)
    return metrics.confusion_matrix(batch["label"].astype(jnp.int32), predictions, num_channels)

  confusion = np.zeros((num_channels, num_channels), np.int64)
  for batch in global_batches(dataset, num_batches, mesh):
    confusion += np.asarray(jax.device_get(eval_step(variables, batch)), np.int64)
  return confusion


# --- one incremental step ------------------------------------------------------------------

def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Run:
  """What every step of a run shares: config, task, mesh, sources and their label sets."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.task = task_of(config)
    self.mesh = make_mesh()
    for name, batch_size in (("optim.batch_size", config.optim.batch_size),
                             ("data.eval_batch_size", config.data.eval_batch_size)):
      if batch_size % jax.device_count():
        raise errors.InputError(f"{name}={batch_size} must be divisible by the "
                         f"{jax.device_count()} devices")
    self.train_source = pipeline.make_source(config, "train")
    self.val_source = pipeline.make_source(config, "val")
    self.step_lists = splits.StepLists(config, self.task, self.train_source, self.val_source)
    self.iterations_this_run = 0

  def replicated_shapes(self, shapes):
    """Shape/dtype tree -> abstract arrays replicated over the mesh (restore targets)."""
    sharding = replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)

  def abstract_variables(self, model):
    return self.replicated_shapes(jax.eval_shape(
        lambda: model.init(jax.random.key(0), dummy_images(self.config), train=False)))

  def initial_variables(self, step: int, model, teacher_model, teacher_variables):
    """Step 0: fresh initialisation, with the backbone of ``model.pretrained`` if set.
    Step t > 0: grown from the teacher (ALGORITHM.md 1.5), or the teacher's variables
    themselves when the step adds no class (domain-incremental)."""
    config = self.config
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    images = dummy_images(config)
    init_fn = lambda rng: model.init(rng, images, train=False)
    if teacher_model is not None and not self.task.steps[step]:
      init_fn = lambda rng: teacher_variables
    elif teacher_model is not None:
      init_fn = lambda rng: incremental.grow_variables(
          model, teacher_variables, rng, images.shape[1], step,
          init=config.model.new_classifier_init)
    variables = jax.jit(init_fn, out_shardings=replicated(self.mesh))(rng)
    if step == 0 and config.model.pretrained:
      backbone = convert.pretrained_backbone_variables(
          config.model.pretrained, config.model.backbone, config.model.activation)
      variables = self.replicate(incremental.transfer_variables(
          {"params": {"backbone": backbone["params"]},
           "batch_stats": {"backbone": backbone["batch_stats"]}}, variables))
      log(f"step 0: backbone initialised from {config.model.pretrained}")
    return variables

  def train_incremental_step(self, step: int):
    """Trains step ``step`` (resuming from its newest checkpoint), saves its export."""
    config, task = self.config, self.task
    indices = self.step_lists.train(step)
    if len(indices) < config.optim.batch_size:
      raise errors.InputError(f"step {step} has {len(indices)} training images, fewer than one "
                       f"global batch ({config.optim.batch_size})")
    epochs = config.optim.epochs_step0 if step == 0 else config.optim.epochs_incremental
    base_lr = config.optim.lr_step0 if step == 0 else config.optim.lr_incremental
    max_iterations = epochs * (len(indices) // config.optim.batch_size)
    num_old = tasks.num_old_classes(task, step)
    log(f"step {step}: classes {list(task.steps[step])}, {len(indices)} training images, "
        f"{max_iterations} iterations ({epochs} epochs), lr {base_lr}, K_old={num_old}")

    classes_per_step = tasks.classes_per_step(task, step)
    model = make_model(config, classes_per_step)
    teacher_model, frozen = None, {}
    if step > 0:
      teacher_model = make_model(config, tasks.classes_per_step(task, step - 1))
      frozen["teacher"], _ = checkpoint.load_export(
          self.workdir, step - 1, self.abstract_variables(teacher_model))
      if config.pseudo.entropy:
        frozen["thresholds"] = self.replicate(
            self.entropy_thresholds(step, teacher_model, frozen["teacher"]))
      if config.gsc.prototypes:
        prototypes, seen = checkpoint.load_prototypes(self.workdir, step - 1)
        frozen["prototypes"] = self.replicate(prototypes)
        frozen["prototype_seen"] = self.replicate(seen)
    optimizer, schedule = make_optimizer(config.optim, base_lr, max_iterations)
    train_step, compensator = make_train_step(model, teacher_model, optimizer, config,
                                              classes_per_step)

    create_state = functools.partial(create_train_state, optimizer=optimizer,
                                     compensator=compensator)
    label_lut = tasks.train_label_lut(task, step, config.data.void_to_background)
    dataset = pipeline.train_dataset(config, self.train_source, indices, label_lut,
                                     seed=config.seed * 1000 + step,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    data_iterator = iter(dataset)
    manager = checkpoint.train_manager(self.workdir, step)
    if manager.latest_step() is not None:
      abstract_state = self.replicated_shapes(
          jax.eval_shape(create_state, self.abstract_variables(model)))
      state = checkpoint.restore_train_state(manager, abstract_state, data_iterator)
      log(f"step {step}: resumed from iteration {manager.latest_step()}")
    else:
      variables = self.initial_variables(step, model, teacher_model, frozen.get("teacher"))
      state = jax.jit(create_state, out_shardings=replicated(self.mesh))(variables)

    train_step = jax.jit(train_step, donate_argnums=(0,))
    iteration = int(jax.device_get(state["iteration"]))
    interval_start, interval_iterations = time.time(), 0
    while iteration < max_iterations:
      batch = to_global_batch(next(data_iterator), self.mesh)
      state, scalars = train_step(state, frozen, batch)
      iteration += 1
      interval_iterations += 1
      self.iterations_this_run += 1
      if iteration % config.log_every == 0 or iteration == max_iterations:
        scalars = {k: float(v) for k, v in jax.device_get(scalars).items()}
        elapsed = time.time() - interval_start
        seconds_per_iteration = elapsed / interval_iterations
        images_per_second = config.optim.batch_size / seconds_per_iteration
        eta = seconds_per_iteration * (max_iterations - iteration)
        terms = " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k != "loss")
        lr = float(schedule(iteration - 1))
        log(f"step {step} it {iteration}/{max_iterations} loss {scalars['loss']:.4f} "
            f"({terms}) lr {lr:.5f} {images_per_second:.1f} img/s ETA {_format_duration(eta)}")
        record = {"step": step, "iteration": iteration, "lr": lr,
                  "images_per_second": images_per_second, **scalars}
        if "compensation" in state:  # GSC's group means m_k (5.1), for analysis
          record["group_means"] = np.asarray(
              jax.device_get(state["compensation"].group_means)).tolist()
        append_jsonl(self.workdir, record)
        interval_start, interval_iterations = time.time(), 0
      if iteration % config.checkpoint_every == 0 and iteration < max_iterations:
        checkpoint.save_train_state(manager, iteration, state, data_iterator)
      if self.iterations_this_run == config.stop_after_iterations:
        manager.wait_until_finished()
        raise InterruptedRun(f"stopped after {self.iterations_this_run} iterations "
                             f"(stop_after_iterations) at step {step} iteration {iteration}")
    manager.wait_until_finished()
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    if step == 0 or config.gsc.prototypes:  # step 0's are kept for any later GSC run
      prototypes, seen = self.prototypes(step, model, variables, teacher_model, frozen)
      checkpoint.save_prototypes(self.workdir, step, prototypes, seen)
    checkpoint.save_export(self.workdir, step, variables, self.export_meta(step))
    return model, variables

  def replicate(self, tree):
    """An array or pytree of host arrays, replicated over the mesh."""
    return jax.device_put(tree, replicated(self.mesh))

  def step_pass(self, step: int):
    """One deterministic pass over step ``step``'s training images with its train labels
    (evaluation preprocessing, padded with ignored images): for thresholds, prototypes."""
    task = self.task
    indices = self.step_lists.train(step)
    label_lut = tasks.train_label_lut(task, step, self.config.data.void_to_background)
    dataset, num_batches = pipeline.eval_dataset(
        self.config, self.train_source, indices, label_lut, jax.process_index(),
        jax.process_count())
    return global_batches(dataset, num_batches, self.mesh)

  def entropy_thresholds(self, step: int, teacher_model, teacher_variables) -> np.ndarray:
    """PLOP's per-old-class entropy thresholds from one teacher pass over the step's
    training data, before training (ALGORITHM.md 4); saved in the step dir and reused."""
    path = os.path.join(checkpoint.step_dir(self.workdir, step), "entropy_thresholds.json")
    if os.path.exists(path):
      return np.asarray(checkpoint.read_json(path)["thresholds"], np.float32)
    config = self.config
    num_classes = sum(tasks.classes_per_step(self.task, step))
    num_old = tasks.num_old_classes(self.task, step)
    mode = config.pseudo.thresholds
    if mode not in ("histogram", "median"):
      raise errors.InputError(f"unknown pseudo.thresholds {mode!r}; valid: histogram, median")

    @jax.jit
    def teacher_pass(variables, batch):
      logits = teacher_model.apply(variables, batch["image"], train=False)["logits"]
      labels = batch["label"].astype(jnp.int32)
      if mode == "histogram":
        return pseudo_labels.entropy_histogram(labels, logits, num_classes)
      return (pseudo_labels.normalized_entropy(logits, num_classes),
              jnp.argmax(logits, axis=-1), labels == 0)

    start = time.time()
    histogram = np.zeros((num_old, pseudo_labels.ENTROPY_BINS), np.int64)
    entropies, argmaxes = [], []
    for batch in self.step_pass(step):
      result = teacher_pass(teacher_variables, batch)
      if mode == "histogram":
        histogram += np.asarray(jax.device_get(result), np.int64)
      else:
        entropy, argmax, background = (
            multihost_utils.process_allgather(x, tiled=True) for x in result)
        entropies.append(entropy[background])
        argmaxes.append(argmax[background])
    if mode == "histogram":
      thresholds = pseudo_labels.histogram_thresholds(histogram, config.pseudo.threshold_floor)
    else:
      thresholds = pseudo_labels.median_thresholds(
          np.concatenate(entropies), np.concatenate(argmaxes), num_old,
          config.pseudo.threshold_floor)
    log(f"step {step}: entropy thresholds ({mode}) in {time.time() - start:.1f} s: "
        f"{np.array2string(thresholds, precision=4)}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.write_json(path, {"mode": mode, "thresholds": thresholds.tolist()})
    return thresholds

  def prototypes(self, step: int, model, variables, teacher_model, frozen):
    """GSC's prototypes at the end of step ``step`` (ALGORITHM.md 5.3): per class, the mean
    head feature of its pixels over the step's training data (ground truth for the step's
    classes, the training targets for old ones, background included); classes absent from
    the step keep their previous prototype."""
    config = self.config
    num_classes = sum(tasks.classes_per_step(self.task, step))

    @jax.jit
    def prototype_pass(variables, frozen, batch):
      labels = batch["label"].astype(jnp.int32)
      teacher_outputs = None
      if teacher_model is not None and methods.uses_pseudo_labels(config):
        teacher_outputs = teacher_model.apply(frozen["teacher"], batch["image"], train=False)
      targets, _ = methods.training_targets(labels, teacher_outputs, frozen, config,
                                            num_classes)
      head = model.apply(variables, batch["image"], train=False)["head"]
      return pseudo_labels.prototype_sums(head, targets, num_classes)

    start = time.time()
    sums = counts = 0.0
    for batch in self.step_pass(step):
      batch_sums, batch_counts = jax.device_get(prototype_pass(variables, frozen, batch))
      sums = sums + np.asarray(batch_sums, np.float64)
      counts = counts + np.asarray(batch_counts, np.float64)
    previous = checkpoint.load_prototypes(self.workdir, step - 1) if step > 0 else (None, None)
    prototypes, seen = pseudo_labels.updated_prototypes(*previous, sums, counts)
    log(f"step {step}: prototypes of {int(np.sum(counts > 0))} classes in "
        f"{time.time() - start:.1f} s")
    return prototypes.astype(np.float32), seen

  def export_meta(self, step: int) -> dict:
    model = self.config.model
    return {"step": step, "dataset": self.config.dataset,
            "classes_per_step": [list(c) for c in self.task.steps[:step + 1]],
            "model": {"backbone": model.backbone, "output_stride": model.output_stride,
                      "head_channels": model.head_channels, "activation": model.activation},
            "void_to_background": self.config.data.void_to_background}

  def evaluate_step(self, step: int, model, variables) -> dict:
    task = self.task
    indices = self.step_lists.test(step)
    label_lut = tasks.test_label_lut(task, step, self.config.data.eval_ignore_background)
    dataset, num_batches = pipeline.eval_dataset(
        self.config, self.val_source, indices, label_lut, jax.process_index(),
        jax.process_count())
    num_channels = sum(tasks.classes_per_step(task, step))
    start = time.time()
    confusion = evaluate(model, variables, dataset, num_batches, num_channels, self.mesh)
    summary = metrics.summarize_step(confusion, task, step)
    summary["num_test_images"] = int(len(indices))
    summary["evaluation"] = metrics.evaluation_protocol(self.config.data)
    log(f"step {step}: evaluated {len(indices)} images in {time.time() - start:.1f} s: "
        f"mIoU all {_percent(summary['all'])} old {_percent(summary['old'])} "
        f"new {_percent(summary['new'])}")
    append_jsonl(self.workdir, {"step": step, "eval": summary})
    return summary


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def task_of(config) -> tasks.Task:
  """The config's task; an unknown task or bad class order is an error naming valid ones."""
  class_order = None
  if config.class_order:
    try:
      class_order = [int(part) for part in config.class_order.split(",")]
    except ValueError:
      raise errors.InputError(f"class_order {config.class_order!r} must be comma-separated "
                       "integers") from None
  return tasks.get_task(config.dataset, config.task, num_classes=config.data.num_classes,
                        class_order=class_order)


# --- the whole task ------------------------------------------------------------------------

def _reuse_step0(run: Run, other_workdir: str) -> None:
  """Copies another run's finished step-0 export (and its evaluation) into this work dir."""
  if not checkpoint.export_exists(other_workdir, 0):
    raise errors.MissingFileError(f"init_step0_from={other_workdir!r} has no finished step-0 export "
                            f"(expected {checkpoint.step_dir(other_workdir, 0)}/export_meta.json)")
  other_meta = checkpoint.read_json(
      os.path.join(checkpoint.step_dir(other_workdir, 0), "export_meta.json"))
  own_meta = run.export_meta(0)
  for key in ("dataset", "classes_per_step", "model"):
    if other_meta.get(key) != own_meta[key]:
      raise errors.InputError(f"init_step0_from={other_workdir!r}: its step 0 has {key}="
                       f"{other_meta.get(key)}, this run needs {own_meta[key]}")
  if other_meta.get("void_to_background") != own_meta["void_to_background"]:
    log(f"note: the reused step 0 was trained with data.void_to_background="
        f"{other_meta.get('void_to_background')}; this run uses "
        f"{own_meta['void_to_background']} from step 1 on")
  if jax.process_index() == 0:
    source, target = checkpoint.step_dir(other_workdir, 0), checkpoint.step_dir(run.workdir, 0)
    os.makedirs(target, exist_ok=True)
    for name in ("export", "export_meta.json", "metrics.json", checkpoint.PROTOTYPES_FILE):
      path = os.path.join(source, name)
      if os.path.isdir(path):
        shutil.copytree(path, os.path.join(target, name), dirs_exist_ok=True)
      elif os.path.exists(path):
        shutil.copy(path, os.path.join(target, name))
  multihost_utils.sync_global_devices("reuse_step0")
  log(f"step 0: reused the finished export of {other_workdir}")


def _step_finished(workdir: str, step: int) -> bool:
  return (checkpoint.export_exists(workdir, step)
          and os.path.exists(checkpoint.metrics_path(workdir, step)))


def write_results(run: Run, last_step: int) -> list[dict]:
  summaries = [checkpoint.read_json(checkpoint.metrics_path(run.workdir, step))
               for step in range(last_step + 1)
               if os.path.exists(checkpoint.metrics_path(run.workdir, step))]
  if jax.process_index() == 0 and summaries:
    metrics.write_results_csv(os.path.join(run.workdir, "results.csv"), run.task, summaries)
    metrics.write_summary_json(os.path.join(run.workdir, "summary.json"), run.task, summaries)
  return summaries


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs steps ``first_step..last_step`` of the task; finished steps are skipped.

  Returns the per-step summaries (ALGORITHM.md 1.8) of every finished step.
  """
  run = Run(config, workdir)
  num_steps = len(run.task.steps)
  last_step = num_steps - 1 if config.last_step < 0 else config.last_step
  if not 0 <= config.first_step <= last_step < num_steps:
    raise errors.InputError(f"steps {config.first_step}..{last_step} are outside task "
                     f"{config.task!r}, which has steps 0..{num_steps - 1}")
  if config.init_step0_from and config.first_step == 0 and not _step_finished(workdir, 0):
    _reuse_step0(run, config.init_step0_from)
  if config.first_step > 0 and not checkpoint.export_exists(workdir, config.first_step - 1):
    raise errors.MissingFileError(
        f"first_step={config.first_step} needs the export of step {config.first_step - 1} "
        f"in {workdir}; run the earlier steps first (or set init_step0_from)")
  log(f"task {config.dataset} {config.task}: {num_steps} steps "
      f"{[list(s) for s in run.task.steps]}; running steps {config.first_step}..{last_step}")
  for step in range(config.first_step, last_step + 1):
    if _step_finished(workdir, step):
      log(f"step {step}: finished earlier, skipping")
      continue
    if checkpoint.export_exists(workdir, step):  # trained, but stopped before evaluating
      model = make_model(config, tasks.classes_per_step(run.task, step))
      variables, _ = checkpoint.load_export(workdir, step, run.abstract_variables(model))
      log(f"step {step}: trained earlier, evaluating its export")
    else:
      model, variables = run.train_incremental_step(step)
    summary = run.evaluate_step(step, model, variables)
    checkpoint.save_step_metrics(workdir, step, summary)
    multihost_utils.sync_global_devices(f"step_{step}_done")
    if jax.process_index() == 0:
      # The export holds everything later steps need; the train checkpoints can go.
      shutil.rmtree(os.path.join(checkpoint.step_dir(workdir, step), "checkpoints"),
                    ignore_errors=True)
    write_results(run, last_step)
  summaries = write_results(run, last_step)
  log("\n" + metrics.format_table(run.task, summaries))
  return summaries

"""The incremental driver: the loop over a task's steps, and the iteration loop of one.

One incremental step t (``train_one_step``):
  1. the step's facts (tasks.StepFacts), image list (docs/algorithm.md 1.2) and labels (1.3);
  2. the model for the classes seen so far; at t > 0 its variables are grown from step
     t-1's export, and that export, unchanged, is the frozen teacher passed INTO the train
     step (models/step_model.py);
  3. the method of the step (methods.build) and its passes before the step (PLOP's
     thresholds; passes.py);
  4. a fresh SGD optimiser with the step's learning rate and poly schedule (1.6), and the
     jitted train step (train_step.py) over the "data" mesh (mesh.py);
  5. the iteration loop: progress reports, periodic checkpoints of train state + input
     iterator (exact resume), a stop at the same iteration boundary on every process
     after a SIGTERM/SIGINT on any of them (``StopSignals``), and a stop without saving
     anything when a loss term or the gradient turns non-finite;
  6. the passes after the step (GSC's prototypes), the export of the final model, its
     evaluation (evaluation.py) and the end-of-step picture.
"""

import dataclasses
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from gsc_jax import checkpoint
from gsc_jax import compilation_cache
from gsc_jax import errors
from gsc_jax import evaluation
from gsc_jax import mesh as mesh_lib
from gsc_jax import methods
from gsc_jax import metrics
from gsc_jax import passes
from gsc_jax import pictures
from gsc_jax import reporting
from gsc_jax import storage
from gsc_jax import tasks
from gsc_jax import tensorboard
from gsc_jax import train_step as train_step_lib
from gsc_jax import workdir as workdir_lib
from gsc_jax.data import pipeline
from gsc_jax.data import splits
from gsc_jax.data import transforms
from gsc_jax.models import step_model
from gsc_jax.reporting import append_jsonl, format_duration, log

NUM_PICTURE_IMAGES = 4  # test images drawn at the end of every step
PASS_SEED_OFFSET = 500  # augmented passes draw other crops than the step's training


@dataclasses.dataclass
class Run:
  """What every step of a run shares."""
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  mesh: jax.sharding.Mesh
  train_source: object
  val_source: object
  step_lists: splits.StepLists
  events: tensorboard.EventWriter
  stop: "StopSignals"
  iterations_this_run: int = 0


def open_run(config, workdir: str, stop) -> Run:
  task = tasks.task_of(config)
  train_source = pipeline.make_source(config, "train")
  val_source = pipeline.make_source(config, "val")
  return Run(config=config, workdir=workdir, task=task, mesh=mesh_lib.make_mesh(),
             train_source=train_source, val_source=val_source,
             step_lists=splits.StepLists(config, task, train_source, val_source),
             events=tensorboard.EventWriter(workdir), stop=stop)


class StopSignals:
  """SIGTERM (a preempted VM) and SIGINT (Ctrl-C) ask the run to stop at an iteration
  boundary, after saving a checkpoint; a second signal stops at once.

  With several processes the signal may reach any of them, or some only: every process
  must stop at the same iteration, or the others would wait forever in the checkpoint's
  and the train step's collectives. So each iteration every process contributes its flag
  to a tiny reduction over the devices (``mesh.any_process``) dispatched after its train
  step, and reads the previous iteration's result, which is the same on every process (a
  signal stops the run one iteration later than on one process, and reading never waits
  for the current step). Between steps, ``any_process_now`` agrees at once.
  """

  def __init__(self):
    self.received = None
    self._previous = {}
    self._pending = None  # the reduced flags of the previous iteration (several processes)

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
    self.received = signal.Signals(signum).name
    log(f"{self.received} received: saving a checkpoint at the next iteration boundary "
        "(send it again to stop at once)")

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def at_iteration(self, mesh) -> bool:
    """Whether every process stops at this iteration (class docstring); call it once per
    iteration on every process, after dispatching the train step."""
    if jax.process_count() == 1:
      return self.received is not None
    agreed = self._pending is not None and bool(self._pending)
    self._pending = mesh_lib.any_process(self.received is not None, mesh)
    return agreed

  def any_process_now(self) -> bool:
    """Whether a signal reached any process; every process must call it at the same point."""
    self._pending = None
    return mesh_lib.any_process_now(self.received is not None)

  def name(self) -> str:
    return self.received or "a signal on another process"


# --- one incremental step ------------------------------------------------------------------

def step_train_dataset(run: Run, step: int):
  """This process's rows of the augmented stream step ``step`` trains on."""
  config = run.config
  return pipeline.train_dataset(
      config, run.train_source, run.step_lists.train(step),
      tasks.train_label_lut(run.task, step, config.data.void_to_background),
      seed=config.seed * 1000 + step, process_index=jax.process_index(),
      process_count=jax.process_count())


def step_pass_batches(run: Run, step: int, augmented: bool = False):
  """One deterministic pass over step ``step``'s training images with its train labels, as
  global batches: every image once with evaluation preprocessing (padded with ignored
  images), or, ``augmented``, one epoch of training batches (random crops and flips from a
  seed of their own, the last partial batch dropped)."""
  config = run.config
  indices = run.step_lists.train(step)
  label_lut = tasks.train_label_lut(run.task, step, config.data.void_to_background)
  if augmented:
    dataset = pipeline.train_dataset(config, run.train_source, indices, label_lut,
                                     seed=config.seed * 1000 + step + PASS_SEED_OFFSET,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    num_batches = len(indices) // config.optim.batch_size
  else:
    dataset, num_batches = pipeline.eval_dataset(
        config, run.train_source, indices, label_lut, jax.process_index(),
        jax.process_count())
  return mesh_lib.global_batches(dataset, num_batches, run.mesh)


def check_finite(scalars, step: int, iteration: int, last_good: int | None) -> None:
  """Raises ``errors.RunDiverged`` when a scalar of ``scalars`` (iteration ``iteration``)
  is not finite."""
  finite = np.asarray(jax.device_get(scalars["finite"]))
  if finite.all():
    return
  names = train_step_lib.checked_names(scalars)
  values = {name: np.asarray(jax.device_get(scalars[name])).tolist()
            for name, ok in zip(names, finite) if not ok}
  kept = (f"the last good checkpoint (iteration {last_good}) is kept"
          if last_good else "no checkpoint of this step was saved")
  raise errors.RunDiverged(
      f"step {step} iteration {iteration}: non-finite {', '.join(values)} ({values}); the run "
      f"stopped without saving this model, and {kept}. Lower the learning rate or check the "
      "data, then run again (it resumes from the last good checkpoint).")


MAX_SHOWN_VALUES = 12  # longer per-group vectors go to log.jsonl only


def _short(value) -> str:
  """A scalar with 4 decimals; a per-group vector as ``[a b c]`` with 2."""
  if np.ndim(value) == 0:
    return f"{value:.4f}"
  return "[" + " ".join(f"{v:.2f}" for v in np.ravel(value)) + "]"


def report_progress(run: Run, step, iteration, max_iterations, scalars, schedule,
                    seconds_per_iteration) -> None:
  values = {name: np.asarray(value).tolist() for name, value in
            jax.device_get(scalars).items() if name != "finite"}
  images_per_second = run.config.optim.batch_size / seconds_per_iteration
  eta = seconds_per_iteration * (max_iterations - iteration)
  lr = float(schedule(iteration - 1))
  terms = " ".join(f"{name} {_short(value)}" for name, value in values.items()
                   if name != "loss" and np.size(value) <= MAX_SHOWN_VALUES)
  log(f"step {step} it {iteration}/{max_iterations} loss {values['loss']:.4f} ({terms}) "
      f"lr {lr:.5f} {images_per_second:.1f} img/s ETA {format_duration(eta)}")
  append_jsonl(run.workdir, {"step": step, "iteration": iteration, "lr": lr,
                             "images_per_second": images_per_second, **values})
  # Per-group vectors (the compensation's diagnostics) as one curve per group.
  curves = {}
  for name, value in {**values, "lr": lr, "images_per_second": images_per_second}.items():
    if np.ndim(value) == 0:
      curves[f"step_{step}/{name}"] = value
    else:
      curves.update({f"step_{step}/{name}/{index}": element
                     for index, element in enumerate(np.ravel(value))})
  run.events.scalars(iteration, curves)


def train_one_step(run: Run, facts: tasks.StepFacts):
  """Trains step ``facts.step`` (resuming from its newest checkpoint), runs the passes after
  it and saves its export. Returns the model and its final variables."""
  config, step = run.config, facts.step
  indices = run.step_lists.train(step)
  epochs = config.optim.epochs_step0 if step == 0 else config.optim.epochs_incremental
  base_lr = config.optim.lr_step0 if step == 0 else config.optim.lr_incremental
  iterations_per_epoch = len(indices) // config.optim.batch_size
  max_iterations = epochs * iterations_per_epoch
  log(f"step {step}: classes {list(facts.classes)}, {len(indices)} training images, "
      f"{max_iterations} iterations ({epochs} epochs), lr {base_lr}, "
      f"K_old={facts.num_old_classes}")

  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model, frozen = None, {}
  if facts.has_teacher:
    teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
    frozen["teacher"], _ = checkpoint.load_export(
        run.workdir, step - 1, step_model.abstract_variables(teacher_model, run.mesh))
  method = methods.build(config, facts, model, teacher_model)
  frozen.update(mesh_lib.replicate(passes.from_previous_step(method, run.workdir, step),
                                   run.mesh))
  if method.before_step:
    frozen.update(mesh_lib.replicate(passes.before_step(
        method, run.workdir, step, frozen.get("teacher"), frozen,
        lambda augmented: step_pass_batches(run, step, augmented), log), run.mesh))

  optimizer, schedule = train_step_lib.make_optimizer(config.optim, base_lr, max_iterations)
  train_step = jax.jit(train_step_lib.make_train_step(
      model, teacher_model, method, optimizer, iterations_per_epoch),
                       donate_argnums=(0,))

  def create_state(variables):
    return train_step_lib.create_train_state(variables, optimizer, method)

  dataset = step_train_dataset(run, step)
  data_iterator = iter(dataset)
  manager = checkpoint.train_manager(run.workdir, step)
  state, last_good = None, None
  saved = manager.all_steps()
  if saved:  # the newest checkpoint that passes its checksums; failed ones are moved aside
    abstract_state = mesh_lib.replicated_shapes(jax.eval_shape(
        create_state, step_model.abstract_variables(model, run.mesh)), run.mesh)
    state, last_good = manager.restore_newest_good(abstract_state, data_iterator)
  if state is not None:
    log(f"step {step}: resumed from iteration {last_good}")
  else:
    if saved:
      data_iterator = iter(dataset)  # a failed restore may have moved the first one
    variables = step_model.initial_variables(config, facts, model, frozen.get("teacher"),
                                             run.mesh, log)
    state = jax.jit(create_state, out_shardings=mesh_lib.replicated(run.mesh))(variables)

  iteration = int(jax.device_get(state["iteration"]))
  compiled = False  # the first call below compiles; the interval timing starts after it
  interval_start, interval_iterations, first_seconds = time.time(), 0, 0.0
  if iteration < max_iterations:
    log(f"step {step}: compiling the train step ...")
  unchecked = None  # the scalars of the last iteration whose flags were not read yet
  try:
    while iteration < max_iterations:
      batch = mesh_lib.to_global_batch(next(data_iterator), run.mesh)
      if compiled:
        state, scalars = train_step(state, frozen, batch)
        interval_iterations += 1
      else:  # the first call compiles the step, or reads it from the compilation cache
        start, counts = time.time(), compilation_cache.event_counts()
        state, scalars = train_step(state, frozen, batch)
        jax.block_until_ready(scalars)
        first_seconds = time.time() - start
        log(f"step {step}: train step {compilation_cache.obtained_since(counts)} and "
            f"iteration {iteration + 1} run in {first_seconds:.1f} s")
        compiled = True
        interval_start, interval_iterations = time.time(), 0  # the ETA leaves compilation out
      iteration += 1
      run.iterations_this_run += 1
      # The previous iteration's flags: reading them does not wait for this one.
      if unchecked is not None:
        check_finite(unchecked, step, iteration - 1, last_good)
      unchecked = scalars
      reporting_now = iteration % config.log_every == 0 or iteration == max_iterations
      stopping = run.stop.at_iteration(run.mesh)
      # The final iteration has no periodic checkpoint: the export follows at once.
      saving = stopping or (iteration % config.checkpoint_every == 0
                            and iteration < max_iterations)
      if reporting_now or saving:  # nothing is reported or saved from a non-finite iteration
        check_finite(scalars, step, iteration, last_good)
        unchecked = None
      if reporting_now:
        report_progress(run, step, iteration, max_iterations, scalars, schedule,
                        (time.time() - interval_start) / interval_iterations
                        if interval_iterations else first_seconds)
        interval_start, interval_iterations = time.time(), 0
      if saving:
        manager.save(iteration, state, data_iterator)
        last_good = iteration
      else:
        manager.seal_if_finished()
      if stopping:
        raise errors.RunStopped(f"{run.stop.name()}: stopped at step {step} iteration "
                                f"{iteration}, after saving a checkpoint")
      if run.iterations_this_run == config.stop_after_iterations:  # as if killed: no save
        raise errors.RunStopped(f"stopped after {run.iterations_this_run} iterations "
                                f"(stop_after_iterations) at step {step} iteration {iteration}")
    if unchecked is not None:
      check_finite(unchecked, step, iteration, last_good)
  finally:
    manager.wait_until_finished()  # a checkpoint being written is completed on every exit
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  passes.after_step(method, run.workdir, step, variables, frozen,
                    lambda augmented: step_pass_batches(run, step, augmented), log)
  checkpoint.save_export(run.workdir, step, variables,
                         step_model.export_meta(config, run.task, step))
  return model, variables


def test_label_lut(run: Run, step: int):
  data = run.config.data
  return tasks.test_label_lut(run.task, step, data.eval_ignore_background,
                              unseen_as_background=data.eval_unseen == "background")


def test_summary(run: Run, facts: tasks.StepFacts, eval_step, variables) -> dict:
  """The summary (``metrics.summarize_step``) of ``variables`` on the step's test split,
  with the number of test images and the evaluation protocol; no side effects.
  ``eval_step``: ``evaluation.make_eval_step`` of the step's model."""
  indices = run.step_lists.test(facts.step)
  dataset, num_batches = pipeline.eval_dataset(
      run.config, run.val_source, indices, test_label_lut(run, facts.step),
      jax.process_index(), jax.process_count())
  confusion = evaluation.confusion_matrix(
      eval_step, variables, mesh_lib.global_batches(dataset, num_batches, run.mesh),
      facts.num_classes)
  summary = metrics.summarize_step(confusion, run.task, facts.step)
  summary["num_test_images"] = int(len(indices))
  summary["evaluation"] = metrics.evaluation_protocol(run.config.data)
  return summary


def evaluate_step(run: Run, facts: tasks.StepFacts, model, variables) -> dict:
  """Evaluates the step's model on its test split and draws its picture; logs and returns
  the summary."""
  step = facts.step
  start = time.time()
  eval_step = evaluation.make_eval_step(model, facts.num_classes)
  summary = test_summary(run, facts, eval_step, variables)
  log(f"step {step}: evaluated {summary['num_test_images']} images in "
      f"{time.time() - start:.1f} s: "
      f"mIoU all {metrics.percent(summary['all'])} old {metrics.percent(summary['old'])} "
      f"new {metrics.percent(summary['new'])}")
  append_jsonl(run.workdir, {"step": step, "eval": summary})
  draw_predictions(run, facts, eval_step, variables)
  run.events.scalars(step, {f"eval/mIoU_{group}": 100 * summary[group]
                            for group in ("all", "old", "new") if summary[group] is not None})
  run.events.scalars(step, {f"eval_class_iou/{class_id}": 100 * iou
                            for class_id, iou in summary["iou"].items() if iou is not None})
  return summary


def draw_predictions(run: Run, facts: tasks.StepFacts, eval_step, variables) -> None:
  """``step_<t>/predictions.png``: image | ground truth | prediction for the first test
  images of the task's last step (the same images after every step), VOC colours, void
  and classes not seen yet in white."""
  last_step = len(run.task.steps) - 1
  indices = run.step_lists.test(last_step)[:NUM_PICTURE_IMAGES]
  if len(indices) == 0:
    return
  label_lut = test_label_lut(run, facts.step)
  dataset, _ = pipeline.eval_dataset(run.config, run.val_source, indices, label_lut,
                                     jax.process_index(), jax.process_count())
  batch = mesh_lib.to_global_batch(next(iter(dataset)), run.mesh)
  _, channels = eval_step(variables, batch)
  images, labels, channels = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                              for x in (batch["image"], batch["label"], channels))
  if jax.process_index() != 0:
    return
  count = len(indices)
  class_of_channel = np.full(256, tasks.IGNORE_LABEL, np.int64)
  class_of_channel[:facts.num_classes] = facts.channel_classes
  true_classes = class_of_channel[labels[:count]]
  predicted_classes = class_of_channel[channels[:count]]
  grid = pictures.prediction_grid(images[:count], true_classes, predicted_classes,
                                  transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
  shown = np.unique(np.concatenate([true_classes.ravel(), predicted_classes.ravel()]))
  pictures.save_prediction_picture(
      storage.join(checkpoint.step_dir(run.workdir, facts.step), "predictions.png"), grid,
      images.shape[2], shown, class_names=pipeline.class_names(run.config.dataset))
  run.events.image(facts.step, "predictions", grid)


# --- the whole task ------------------------------------------------------------------------

def _reuse_step0(run: Run, other_workdir: str) -> None:
  """Copies another run's finished step-0 export (and its evaluation) into this work dir."""
  if not checkpoint.export_exists(other_workdir, 0):
    raise errors.MissingFileError(
        f"init_step0_from={other_workdir!r} has no finished step-0 export (expected "
        f"{checkpoint.export_meta_path(other_workdir, 0)})")
  other_meta = checkpoint.read_json(checkpoint.export_meta_path(other_workdir, 0))
  own_meta = step_model.export_meta(run.config, run.task, 0)
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
    for relative in storage.files_under(source):
      if relative.split("/")[0] != checkpoint.TRAIN_CHECKPOINTS_DIR:
        storage.copy_file(storage.join(source, relative), storage.join(target, relative))
  multihost_utils.sync_global_devices("reuse_step0")
  log(f"step 0: reused the finished export of {other_workdir}")


def _step_finished(workdir: str, step: int) -> bool:
  return (checkpoint.export_exists(workdir, step)
          and storage.exists(checkpoint.metrics_path(workdir, step)))


def _remove_leftover_checkpoints(run: Run) -> None:
  """Removes the train checkpoints that a run killed between a step's metrics.json and
  their removal left behind, for every finished step of the task, in one log line."""
  num_steps = len(run.task.steps)
  removed = [step for step in range(num_steps)
             if _step_finished(run.workdir, step)
             and checkpoint.remove_train_checkpoints(run.workdir, step)]
  if removed:
    log(f"removed the train checkpoints left behind by finished step(s) "
        f"{', '.join(map(str, removed))} (step_<t>/checkpoints; their exports are kept)")


def _resume_point(run: Run, first_step: int, last_step: int) -> tuple[int, int | None] | None:
  """Where the run goes on: the first unfinished step of ``first_step..last_step`` and the
  iteration of its newest train checkpoint (0 without one; None when the step is trained
  and only its evaluation is left); None when every step is finished."""
  for step in range(first_step, last_step + 1):
    if _step_finished(run.workdir, step):
      continue
    if checkpoint.export_exists(run.workdir, step):
      return step, None
    if not storage.exists(checkpoint.train_checkpoints_dir(run.workdir, step)):
      return step, 0
    manager = checkpoint.train_manager(run.workdir, step)
    try:
      latest = manager.latest_step()
    finally:
      manager.close()
    return step, 0 if latest is None else int(latest)
  return None


def write_results(run: Run, last_step: int) -> list[dict]:
  """``results.csv``, ``summary.json`` and ``miou.png`` from every finished step."""
  summaries = [checkpoint.read_json(checkpoint.metrics_path(run.workdir, step))
               for step in range(last_step + 1)
               if storage.exists(checkpoint.metrics_path(run.workdir, step))]
  if jax.process_index() == 0 and summaries:
    metrics.write_results_csv(storage.join(run.workdir, "results.csv"), run.task, summaries)
    metrics.write_summary_json(storage.join(run.workdir, "summary.json"), run.task, summaries)
    pictures.miou_plot(summaries, f"{run.config.dataset} {run.task.name} {run.config.method}",
                       storage.join(run.workdir, "miou.png"))
  return summaries


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs steps ``first_step..last_step`` of the task; finished steps are skipped. Holds
  the work dir's lock throughout. Returns the per-step summaries (docs/algorithm.md 1.8)
  of every finished step."""
  with workdir_lib.lock(workdir, log), StopSignals() as stop:
    run = open_run(config, workdir, stop)
    try:
      summaries = _run_steps(run)
    finally:
      run.events.close()
  log(where_results_are(workdir, bool(tensorboard.event_files(run.events.logdir))))
  return summaries


def start_header(run: Run, last_step: int) -> str:
  """The lines printed when a run starts: task and steps, method, seed, work dir, where the
  full config is, and the compilation cache (gsc_jax/compilation_cache.py)."""
  config, task = run.config, run.task
  if task.is_domain_incremental:  # every class at step 0, new cities later
    kind = "domain-incremental"
    steps = (f"classes [{metrics.group_label(task.steps[0])}], cities per step "
             + " ".join(str(len(cities)) for cities in task.domains))
  else:
    kind = "overlapped" if config.overlap else "disjoint"
    steps = "classes " + " ".join(f"[{metrics.group_label(classes)}]" for classes in task.steps)
  return "\n".join([
      f"task {config.dataset} {config.task} ({kind}): {len(task.steps)} steps, {steps}; "
      f"running steps {config.first_step}..{last_step}",
      f"method {config.method}, seed {config.seed}, work dir {run.workdir}",
      f"full config: {storage.join(run.workdir, 'config.json')} (printed with --show_config)",
      f"compilation cache: {compilation_cache.directory() or 'off'}"])


def where_results_are(workdir: str, has_events: bool) -> str:
  """The end-of-run lines naming the result files and how to view the curves."""
  lines = [f"results in {workdir}:",
           "  results.csv, summary.json   mIoU (%) per step: all, old, new, every class",
           "  miou.png                    the plot of all / old / new per step",
           "  step_<t>/predictions.png    image, ground truth, prediction after step t"]
  if has_events:
    lines.append(f"  tensorboard --logdir {storage.join(workdir, tensorboard.SUBDIR)}   "
                 "losses, lr, speed, mIoU (pip install tensorboard)")
  return "\n".join(lines)


def check_step_sizes(run: Run, steps) -> None:
  """Every step to be trained must have at least one global batch of training images:
  checked for all of them before any step trains."""
  batch_size = run.config.optim.batch_size
  for step in steps:
    count = len(run.step_lists.train(step))
    if count < batch_size:
      raise errors.InputError(
          f"step {step} has {count} training images, fewer than one global batch "
          f"(optim.batch_size={batch_size}); lower optim.batch_size, or use a task whose "
          "steps have more images")


def _run_steps(run: Run) -> list[dict]:
  config, workdir = run.config, run.workdir
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
  log(start_header(run, last_step))
  _remove_leftover_checkpoints(run)
  check_step_sizes(run, [step for step in range(config.first_step, last_step + 1)
                         if not checkpoint.export_exists(workdir, step)])
  resume_point = _resume_point(run, config.first_step, last_step)
  if resume_point is not None:
    reporting.append_restart(workdir, *resume_point)
  for step in range(config.first_step, last_step + 1):
    if _step_finished(workdir, step):
      log(f"step {step}: finished earlier, skipping")
      continue
    if run.stop.any_process_now():
      raise errors.RunStopped(f"{run.stop.name()}: stopped before step {step}")
    facts = tasks.step_facts(run.task, step)
    if checkpoint.export_exists(workdir, step):  # trained, but stopped before evaluating
      model = step_model.make_model(config, facts.classifier_sizes)
      variables, _ = checkpoint.load_export(
          workdir, step, step_model.abstract_variables(model, run.mesh))
      log(f"step {step}: trained earlier, evaluating its export")
    else:
      model, variables = train_one_step(run, facts)
    summary = evaluate_step(run, facts, model, variables)
    checkpoint.save_step_metrics(workdir, step, summary)
    multihost_utils.sync_global_devices(f"step_{step}_done")
    checkpoint.remove_train_checkpoints(workdir, step)
    write_results(run, last_step)
  summaries = write_results(run, last_step)
  log("\n" + metrics.format_table(run.task, summaries))
  return summaries

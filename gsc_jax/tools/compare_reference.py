"""Trains MiB or PLOP with their released code and with gsc_jax on one tree, and compares.

  python -m gsc_jax.tools.compare_reference --method=mib --reference_code=/src/MiB \\
      --reference_python=/venvs/reference/bin/python --out=runs/compare_mib
  python -m gsc_jax.tools.compare_reference --method=plop \\
      --reference_code=/src/CVPR2021_PLOP --reference_python=... --out=runs/compare_plop

``--reference_code`` is a checkout of fcdl94/MiB or arthurdouillard/CVPR2021_PLOP and
``--reference_python`` an interpreter with torch and torchvision (docs/reference_comparison.md
gives the install and the commits). Nothing of the released code is in this repository: it
is imported from that path when ``reference_driver.py`` runs it.

What it does, resumable (a finished step or run is read back, not redone):
1. writes the synthetic dataset once as a VOC tree under ``--out/tree`` (``--num_train`` /
   ``--num_val`` images of ``--image_size`` px), with the split lists and links in the
   layouts the released programs read (MiB: ``PascalVOC12/``, PLOP: ``list/`` and
   ``VOCdevkit/VOC2012/JPEGImages``);
2. per seed, runs the released program one step at a time (``reference/seed<s>``) and
   gsc_jax's ``main`` on configs/voc.py with the same network (resnet_tiny, 64-channel head),
   crop, batch, epochs, learning rates, distillation weight and evaluation (MiB: unseen
   classes ignored; PLOP: unseen classes scored as background, as each program does);
3. scores both sides' confusion matrices with the same summary (gsc_jax.metrics): per
   step, mIoU all/old/new of each seed on each side, and whether the two sides' means of
   "all" agree within max(2 points, twice the seed spread), the spread being the larger of
   the two sides' standard deviations over the seeds;
4. checks the parts: the released models scored by gsc_jax's evaluation, three iterations
   of both train steps from the same weights on one batch (step 0; MiB also step 1, with
   its teacher), and both sides' augmented data; and writes it all to
   ``--out/comparison.md`` and ``comparison.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import flax
import jax
import numpy as np

from configs import common
from gsc_jax import checkpoint
from gsc_jax import errors
from gsc_jax import evaluation
from gsc_jax import methods
from gsc_jax import metrics
from gsc_jax import platform_flags
from gsc_jax import tasks
from gsc_jax import train
from gsc_jax import train_step
from gsc_jax.data import synthetic
from gsc_jax.models import convert
from gsc_jax.models import step_model

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_driver.py")
VOC_CONFIG = os.path.join(REPOSITORY_ROOT, "configs", "voc.py")
NUM_CLASSES = 21
PERTURBATION = 1e-6  # relative weight noise of the train check's noise floor
MIB_DISTILLATION_WEIGHT = 10.0  # what the released --method=MiB sets, whatever the task

# Per method: the released program's --method, and gsc_jax's config values that make each
# side do what the other does (docs/reference_comparison.md).
METHODS = {
    "mib": {"reference_method": "MiB", "eval_unseen": "ignore"},
    "plop": {"reference_method": "PLOP", "eval_unseen": "background"},
}


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m gsc_jax.tools.compare_reference",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--method", required=True, choices=sorted(METHODS))
  parser.add_argument("--reference_code", required=True,
                      help="checkout of fcdl94/MiB (mib) or arthurdouillard/CVPR2021_PLOP (plop)")
  parser.add_argument("--reference_python", default=sys.executable,
                      help="interpreter with torch and torchvision (default: this one)")
  parser.add_argument("--out", required=True, help="directory for the tree, runs and tables")
  parser.add_argument("--task", default="15-5", help="VOC task (default 15-5)")
  parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of both sides")
  parser.add_argument("--num_train", type=int, default=700)
  parser.add_argument("--num_val", type=int, default=200)
  parser.add_argument("--image_size", type=int, default=96, help="image, crop and eval size")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--epochs", default="8,8", help="step 0, incremental steps")
  parser.add_argument("--lr", default="0.05,0.02", help="step 0, incremental steps")
  parser.add_argument("--sides", default="reference,gsc_jax",
                      help="which sides to run now (the table uses whatever has finished)")
  args = parser.parse_args(argv)
  args.seeds = [int(seed) for seed in args.seeds.split(",")]
  args.epochs = _pair(args.epochs, int, "--epochs")
  args.lr = _pair(args.lr, float, "--lr")
  args.sides = args.sides.split(",")
  if not set(args.sides) <= {"reference", "gsc_jax"}:
    raise errors.InputError(f"--sides={','.join(args.sides)}: use reference and/or gsc_jax")
  if "reference" in args.sides and not os.path.isfile(
      os.path.join(args.reference_code, "run.py")):
    raise errors.InputError(f"--reference_code={args.reference_code} has no run.py; give a "
                            "checkout of fcdl94/MiB or arthurdouillard/CVPR2021_PLOP")
  return args


def _pair(text: str, kind, name: str) -> tuple:
  values = [kind(value) for value in text.split(",")]
  if len(values) != 2:
    raise errors.InputError(f"{name}={text!r}: give two values, step 0 and incremental steps")
  return tuple(values)


def write_tree(args) -> str:
  """The synthetic VOC tree, with the split lists in both released programs' layouts."""
  root = os.path.join(args.out, "tree")
  lists = os.path.join(root, "ImageSets", "Segmentation")
  if not os.path.exists(os.path.join(lists, "val.txt")):
    synthetic.write_voc_layout(root, args.num_train, args.num_val, NUM_CLASSES,
                               args.image_size, seed=0)
  # Both programs read "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" lines. MiB
  # under <root>/PascalVOC12/splits, both paths relative to <root>/PascalVOC12; PLOP under
  # <root>/list, images relative to <root>/VOCdevkit/VOC2012 and labels to <root>.
  mib_root = os.path.join(root, "PascalVOC12")
  for directory in (os.path.join(root, "list"), os.path.join(mib_root, "splits")):
    os.makedirs(directory, exist_ok=True)
    for list_name in ("train_aug.txt", "val.txt"):
      with open(os.path.join(lists, list_name), encoding="utf-8") as file:
        names = file.read().split()
      with open(os.path.join(directory, list_name), "w", encoding="utf-8") as file:
        file.writelines(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n"
                        for name in names)
  links = {os.path.join(mib_root, "JPEGImages"): os.path.join("..", "JPEGImages"),
           os.path.join(mib_root, "SegmentationClassAug"):
               os.path.join("..", "SegmentationClassAug"),
           os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages"):
               os.path.join("..", "..", "JPEGImages")}
  for link, target in links.items():
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.lexists(link):
      os.symlink(target, link)
  return root


def reference_step_arguments(args, tree: str, seed: int, step: int) -> list[str]:
  """The released run.py's command line for one step, as their shell scripts write it."""
  incremental = int(step > 0)
  return ["--data_root", tree, "--dataset", "voc",
          "--task", args.task, "--step", str(step), "--lr", str(args.lr[incremental]),
          "--epochs", str(args.epochs[incremental]), "--batch_size", str(args.batch_size),
          "--crop_size", str(args.image_size), "--method", METHODS[args.method]["reference_method"],
          "--overlap", "--no_pretrained", "--random_seed", str(seed), "--num_workers", "0",
          "--visualize",  # store_false in both programs: no tensorboardX summaries
          "--val_interval", "1000000",  # no per-epoch validation; the test runs at the end
          "--name", args.method]


def reference_dir(args, seed: int) -> str:
  """The released program's working directory for ``seed`` (its logs, checkpoints, results)."""
  return os.path.join(args.out, "reference", f"seed{seed}")


def driver_command(args, tree: str, seed: int, step: int, *driver_flags: str,
                   program_flags=()) -> list[str]:
  """The reference interpreter running reference_driver.py on one step of the released
  program: the driver's own flags, then the program's (``program_flags`` appended)."""
  return ([args.reference_python, DRIVER, f"--code={os.path.abspath(args.reference_code)}",
           *driver_flags, "--"]
          + reference_step_arguments(args, os.path.abspath(tree), seed, step)
          + list(program_flags))


def run_reference(args, tree: str, seed: int, task: tasks.Task) -> None:
  directory = reference_dir(args, seed)
  os.makedirs(directory, exist_ok=True)
  for step in range(len(task.steps)):
    result = os.path.join(directory, f"step{step}.json")
    if os.path.exists(result):
      continue
    command = driver_command(
        args, tree, seed, step, f"--result={os.path.abspath(result)}",
        f"--export={os.path.abspath(reference_export_path(args, seed, step))}")
    _run_logged(command, directory, os.path.join(directory, f"step{step}.log"),
                f"reference {args.method} seed {seed} step {step}")


def reference_export_path(args, seed: int, step: int) -> str:
  return os.path.join(reference_dir(args, seed), f"step{step}_model.npz")


def gsc_jax_config_argument(args, tree: str, seed: int) -> str:
  values = {
      "method": args.method, "seed": seed, "data.root": tree,
      "data.split_cache_dir": "", "data.crop_size": args.image_size,
      "data.eval_size": args.image_size, "data.eval_batch_size": args.batch_size,
      "data.eval_unseen": METHODS[args.method]["eval_unseen"],
      "model.backbone": "resnet_tiny", "model.head_channels": 64,
      "optim.batch_size": args.batch_size, "optim.epochs_step0": args.epochs[0],
      "optim.epochs_incremental": args.epochs[1], "optim.lr_step0": args.lr[0],
      "optim.lr_incremental": args.lr[1]}
  if args.method == "mib":
    values["loss.kd_weight"] = MIB_DISTILLATION_WEIGHT
  return ",".join([args.task] + [f"{key}={value}" for key, value in values.items()])


def gsc_jax_config(args, tree: str, seed: int):
  """The gsc_jax side's config of ``seed``, its method preset resolved."""
  config = common.load_config_file(VOC_CONFIG).get_config(
      gsc_jax_config_argument(args, os.path.abspath(tree), seed))
  with config.unlocked():
    methods.resolve_preset(config)
  return config


def run_gsc_jax(args, tree: str, seed: int) -> None:
  workdir = os.path.abspath(os.path.join(args.out, "gsc_jax", f"seed{seed}"))
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return
  os.makedirs(workdir, exist_ok=True)
  command = [sys.executable, "-m", "gsc_jax.main",
             f"--config={VOC_CONFIG}:{gsc_jax_config_argument(args, os.path.abspath(tree), seed)}",
             f"--workdir={workdir}"]
  _run_logged(command, REPOSITORY_ROOT, os.path.join(workdir, "main.log"),
              f"gsc_jax {args.method} seed {seed}")


def _run_logged(command: list[str], cwd: str, log_path: str, what: str) -> None:
  print(f"{time.strftime('%H:%M:%S')} {what}: running (log {log_path})", flush=True)
  start = time.time()
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(command) + "\n\n")
    log.flush()
    code = subprocess.call(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
  if code != 0:
    raise errors.InputError(f"{what} failed (exit {code}); its output is in {log_path}")
  print(f"{time.strftime('%H:%M:%S')} {what}: done in {time.time() - start:.0f} s", flush=True)


def evaluation_check(args, tree: str, task: tasks.Task) -> list[dict]:
  """Every exported model of the released program, converted (convert.py) and scored by
  gsc_jax's own evaluation, next to the released program's own score of it."""
  checks = []
  for seed in args.seeds:
    summaries = reference_summaries(args, seed, task) or []
    config = gsc_jax_config(args, tree, seed)
    run = train.open_run(config, os.path.join(reference_dir(args, seed), "gsc_jax_evaluation"),
                         stop=None)
    for step, own in enumerate(summaries):
      path = reference_export_path(args, seed, step)
      if not os.path.exists(path):
        continue
      facts = tasks.step_facts(task, step)
      model = step_model.make_model(config, facts.classifier_sizes)
      with np.load(path) as archive:
        variables = convert.convert_segmentation_module(dict(archive), config.model.backbone,
                                                        batch_norm="batchnorm")
      summary = train.test_summary(run, facts, evaluation.make_eval_step(
          model, facts.num_classes), variables)
      checks.append({"seed": seed, "step": step, "reference": _points(own["all"]),
                     "gsc_jax_evaluation": _points(summary["all"])})
  return checks


def reference_check(args, tree: str, name: str, step: int, *driver_flags: str,
                    program_flags=()) -> dict | None:
  """The arrays of the driver's check ``name`` (``--<name>=<path>``) on ``step`` of the first
  seed: read back if done, run now if the reference side is enabled, else None."""
  directory = os.path.join(args.out, f"{name}_step{step}")
  path = os.path.join(directory, "reference.npz")
  if not os.path.exists(path):
    if "reference" not in args.sides:
      return None
    os.makedirs(directory, exist_ok=True)
    command = driver_command(args, tree, args.seeds[0], step,
                             f"--{name}={os.path.abspath(path)}", *driver_flags,
                             program_flags=program_flags)
    _run_logged(command, directory, os.path.join(directory, "reference.log"),
                f"reference {args.method} {name} step {step}")
  with np.load(path) as archive:
    return {key: archive[key] for key in archive.files}


def reference_step0_checkpoint(args, seed: int) -> str:
  """Where the released run.py saved step 0 of ``seed`` (its own naming)."""
  return os.path.join(reference_dir(args, seed), "checkpoints", "step",
                      f"{args.task}-voc_{args.method}_0.pth")


def train_check(args, tree: str, task: tasks.Task, step: int,
                iterations: int = 3) -> dict | None:
  """A few iterations of the released ``Trainer.train`` and of gsc_jax's train step on one
  batch of the released loader of ``step``, from the same weights (seed of the first
  ``--seeds``; at step 1 the released run's step-0 model as the teacher and the student
  after the released balanced initialisation): both sides' losses (the classification
  term, and the others: MiB's distillation), and per iteration the tensor furthest from the
  released one, as max |gsc_jax - released| / max |released change since the start|, among
  the parameters and among the BatchNorm statistics. For scale, the same measure for
  gsc_jax against itself started from weights perturbed by ``PERTURBATION`` (relative):
  after the first iteration it shows how fast iterations on one batch amplify a
  difference as small as rounding."""
  seed = args.seeds[0]
  program_flags = []
  if step > 0:
    if not os.path.exists(reference_step0_checkpoint(args, seed)):
      return None
    program_flags.append(
        f"--step_ckpt={os.path.abspath(reference_step0_checkpoint(args, seed))}")
  reference = reference_check(args, tree, "train_check", step,
                              f"--check_iterations={iterations}", program_flags=program_flags)
  if reference is None:
    return None
  config = gsc_jax_config(args, tree, seed)
  facts = tasks.step_facts(task, step)
  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model, frozen = None, {}
  if step > 0:
    teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
    frozen["teacher"] = released_variables(reference, "teacher/", config)
  method = methods.build(config, facts, model, teacher_model)
  optimizer, _ = train_step.make_optimizer(config.optim, float(reference["learning_rate"]),
                                           int(reference["max_iterations"]))

  def variables_after(iteration: int) -> dict:
    return released_variables(reference, f"iteration{iteration}/", config)

  def flat(variables) -> dict:
    return flax.traverse_util.flatten_dict(variables, sep="/")

  initial = variables_after(0)
  start = flat(initial)
  iterate = jax.jit(train_step.make_train_step(model, teacher_model, method, optimizer,
                                             int(reference["max_iterations"])))
  batch = {"image": reference["images"], "label": reference["labels"].astype(np.int32)}

  def trajectory(variables) -> tuple[list[tuple[float, float]], list[dict]]:
    state = train_step.create_train_state(variables, optimizer, method)
    losses, states = [], []
    for _ in reference["class_losses"]:
      state, scalars = iterate(state, frozen, batch)
      losses.append((float(scalars["ce"]), float(scalars["loss"] - scalars["ce"])))
      states.append(flat({"params": state["params"], "batch_stats": state["batch_stats"]}))
    return losses, states

  def largest_deviation(ours: dict, other: dict, collection: str) -> dict:
    ratios = {name.removeprefix(collection + "/"):
              float(np.max(np.abs(np.asarray(ours[name]) - other[name]))
                    / max(float(np.max(np.abs(other[name] - start[name]))), 1e-12))
              for name in other if name.startswith(collection + "/")}
    worst = max(ratios, key=ratios.get)
    return {"tensor": worst, "ratio": ratios[worst]}

  losses, states = trajectory(initial)
  noise = np.random.default_rng(0)
  _, perturbed = trajectory(jax.tree.map(
      lambda x: x * (1 + PERTURBATION * noise.standard_normal(x.shape)).astype(x.dtype),
      initial))
  deviations = []
  for iteration, (ours, control) in enumerate(zip(states, perturbed), start=1):
    released = flat(variables_after(iteration))
    deviations.append({"iteration": iteration,
                       "params": largest_deviation(ours, released, "params"),
                       "batch_stats": largest_deviation(ours, released, "batch_stats"),
                       "perturbed_params": largest_deviation(control, ours, "params")})
  return {"seed": seed, "step": step,
          "reference_losses": [[float(a), float(b)] for a, b in zip(reference["class_losses"],
                                                                    reference["other_losses"])],
          "gsc_jax_losses": [list(pair) for pair in losses], "deviations": deviations}


def released_variables(arrays: dict, prefix: str, config) -> dict:
  """DeepLabV3 variables of the released model stored under ``prefix`` in a check's arrays."""
  return convert.convert_segmentation_module(
      {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)},
      config.model.backbone, batch_norm="batchnorm")


def data_check(args, tree: str, epochs: int = 2) -> dict | None:
  """Label pixel fractions and image moments of ``epochs`` epochs of augmented step-0
  training data: the released dataset code's, and the batches gsc_jax's step 0 trains on
  (seed of the first ``--seeds``). The two sides draw their crops independently, so they
  agree up to sampling noise."""
  seed = args.seeds[0]
  reference = reference_check(args, tree, "data_check", 0, f"--check_epochs={epochs}")
  if reference is None:
    return None
  config = gsc_jax_config(args, tree, seed)
  run = train.open_run(config, os.path.join(args.out, "data_check_step0", "gsc_jax"), stop=None)
  dataset = train.step_train_dataset(run, 0)  # the stream step 0 trains on
  batches_per_epoch = len(run.step_lists.train(0)) // config.optim.batch_size
  counts, sums, squares, images = np.zeros(256), np.zeros(3), np.zeros(3), 0
  for _, batch in zip(range(epochs * batches_per_epoch), dataset):
    image, label = np.asarray(batch["image"]), np.asarray(batch["label"]).astype(np.int64)
    counts += np.bincount(label.ravel(), minlength=256)
    sums += image.mean(axis=(1, 2)).sum(axis=0)
    squares += (image ** 2).mean(axis=(1, 2)).sum(axis=0)
    images += image.shape[0]
  fractions = {"reference": reference["label_counts"] / reference["label_counts"].sum(),
               "gsc_jax": counts / counts.sum()}
  labels = sorted(set(np.nonzero(reference["label_counts"])[0]) | set(np.nonzero(counts)[0]))
  return {"seed": seed, "epochs": epochs,
          "images": {"reference": int(reference["images"]), "gsc_jax": images},
          "label_fractions": {side: {int(k): float(v[k]) for k in labels}
                              for side, v in fractions.items()},
          "channel_mean": {"reference": reference["channel_mean"].tolist(),
                           "gsc_jax": (sums / images).tolist()},
          "channel_mean_square": {"reference": reference["channel_mean_square"].tolist(),
                                  "gsc_jax": (squares / images).tolist()}}


def reference_summaries(args, seed: int, task: tasks.Task) -> list[dict] | None:
  """Per step, the gsc_jax summary of the released program's confusion matrix."""
  summaries = []
  for step in range(len(task.steps)):
    path = os.path.join(reference_dir(args, seed), f"step{step}.json")
    if not os.path.exists(path):
      return None
    with open(path, encoding="utf-8") as file:
      result = json.load(file)
    summary = metrics.summarize_step(np.asarray(result["confusion"]), task, step)
    summary["num_test_images"] = result["num_images"]
    summaries.append(summary)
  return summaries


def gsc_jax_summaries(args, seed: int, task: tasks.Task) -> list[dict] | None:
  """Per step, gsc_jax's own summary (step_<t>/metrics.json)."""
  workdir = os.path.join(args.out, "gsc_jax", f"seed{seed}")
  paths = [checkpoint.metrics_path(workdir, step) for step in range(len(task.steps))]
  if not all(os.path.exists(path) for path in paths):
    return None
  return [checkpoint.read_json(path) for path in paths]


def agreement(reference_all: list[float], gsc_jax_all: list[float]) -> dict:
  """Means, spread and verdict of one step's "all" mIoU (points) over the seeds.

  spread = the larger of the two sides' sample standard deviations over the seeds (0 with
  one seed); the sides agree when their means differ by at most max(2, 2 x spread)."""
  spread = max(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
               for values in (reference_all, gsc_jax_all))
  tolerance = max(2.0, 2.0 * spread)
  difference = float(np.mean(gsc_jax_all) - np.mean(reference_all))
  return {"reference_mean": float(np.mean(reference_all)),
          "gsc_jax_mean": float(np.mean(gsc_jax_all)), "difference": difference,
          "spread": spread, "tolerance": tolerance, "within": abs(difference) <= tolerance}


def _points(value) -> float | None:
  return None if value is None else 100.0 * value


def _cell(values) -> str:
  return " / ".join("-" if v is None else f"{v:.1f}" for v in values)


def comparison(args, task: tasks.Task) -> dict:
  """Every finished seed's per-step numbers on both sides, and the per-step verdicts."""
  sides = {"reference": reference_summaries, "gsc_jax": gsc_jax_summaries}
  per_seed = {side: {seed: read(args, seed, task) for seed in args.seeds}
              for side, read in sides.items()}
  finished = [seed for seed in args.seeds
              if all(per_seed[side][seed] is not None for side in sides)]
  steps = []
  for step in range(len(task.steps)):
    row = {"step": step}
    for side in sides:
      row[side] = {key: [_points(per_seed[side][seed][step][key]) for seed in finished]
                   for key in ("all", "old", "new")}
      row[side]["num_test_images"] = [per_seed[side][seed][step]["num_test_images"]
                                      for seed in finished]
    if finished:
      row.update(agreement(row["reference"]["all"], row["gsc_jax"]["all"]))
    steps.append(row)
  return {"method": args.method, "task": task.name, "seeds": finished, "steps": steps}


def markdown(result: dict, args) -> str:
  seeds = ", ".join(str(seed) for seed in result["seeds"])
  lines = [
      f"# {result['method']} on {result['task']}: released code vs gsc_jax",
      "",
      f"Synthetic VOC tree: {args.num_train} train / {args.num_val} val images, "
      f"{args.image_size} px; resnet_tiny + 64-channel head; batch {args.batch_size}, "
      f"epochs {args.epochs[0]}/{args.epochs[1]}, lr {args.lr[0]}/{args.lr[1]}; seeds {seeds}. "
      "mIoU in points, one value per seed. Agreement: the means of \"all\" differ by at most "
      "max(2, 2 x spread), spread = the larger of the two sides' standard deviations over "
      "the seeds.",
      "",
      "| step | side | all | old | new | mean all (sd) | difference | tolerance | agree |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in result["steps"]:
    if "difference" not in row:
      continue
    for side in ("reference", "gsc_jax"):
      values = row[side]
      verdict = ([f"{row['difference']:+.1f}", f"{row['tolerance']:.1f}",
                  "yes" if row["within"] else "**no**"] if side == "gsc_jax" else ["", "", ""])
      deviation = np.std(values["all"], ddof=1) if len(values["all"]) > 1 else 0.0
      lines.append(f"| {row['step']} | {side} | {_cell(values['all'])} | {_cell(values['old'])} "
                   f"| {_cell(values['new'])} | {row[side + '_mean']:.1f} ({deviation:.1f}) | "
                   + " | ".join(verdict) + " |")
  checks = result.get("evaluation_check") or []
  if checks:
    largest = max(abs(check["reference"] - check["gsc_jax_evaluation"]) for check in checks)
    lines += ["", f"Evaluation check: the released program's model after each step "
              f"({len(checks)} models), converted by convert.convert_segmentation_module "
              "and scored by gsc_jax's evaluation, differs from the released program's own "
              f"score by at most {largest:.2f} points (\"all\")."]
  data = result.get("data_check")
  if data:
    fractions = data["label_fractions"]
    differences = {label: fractions["gsc_jax"][label] - fractions["reference"][label]
                   for label in fractions["reference"]}
    worst = max(differences, key=lambda label: abs(differences[label]))
    lines += ["", f"Data check (seed {data['seed']}, step 0, {data['epochs']} epochs of "
              f"augmented training images: {data['images']['reference']} released, "
              f"{data['images']['gsc_jax']} gsc_jax): background pixel fraction "
              f"{fractions['reference'][0]:.4f} released vs {fractions['gsc_jax'][0]:.4f} "
              f"gsc_jax; largest difference of a label's pixel fraction {differences[worst]:+.4f} "
              f"(label {worst}); per-channel mean "
              + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(data["channel_mean"]["reference"],
                                                            data["channel_mean"]["gsc_jax"]))
              + ", mean square "
              + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(
                  data["channel_mean_square"]["reference"], data["channel_mean_square"]["gsc_jax"]))
              + " (released/gsc_jax)."]
  for check in result.get("train_checks") or []:
    losses = {side: " / ".join(f"{a:.6f} + {b:.6f}" for a, b in check[side + "_losses"])
              for side in ("reference", "gsc_jax")}
    lines += ["", f"Train-step check (seed {check['seed']}, step {check['step']}, one batch of "
              "the released loader, the same weights; losses as classification + other "
              f"terms per iteration): released {losses['reference']}; gsc_jax "
              f"{losses['gsc_jax']}.", "",
              "| iteration | parameters: largest deviation / change (tensor) "
              "| BN statistics: largest deviation / change (tensor) "
              f"| for scale: gsc_jax against itself from weights x (1 + {PERTURBATION:g} noise) |",
              "|---|---|---|---|"]
    lines += [f"| {d['iteration']} | {d['params']['ratio']:.4f} ({d['params']['tensor']}) | "
              f"{d['batch_stats']['ratio']:.4f} ({d['batch_stats']['tensor']}) | "
              f"{d['perturbed_params']['ratio']:.4f} ({d['perturbed_params']['tensor']}) |"
              for d in check["deviations"]]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  platform_flags.set_default_cpu_flags()  # this process evaluates with JAX (the checks)
  task = tasks.get_task("voc", args.task, NUM_CLASSES)
  os.makedirs(args.out, exist_ok=True)
  tree = write_tree(args)
  for seed in args.seeds:
    if "reference" in args.sides:
      run_reference(args, tree, seed, task)
    if "gsc_jax" in args.sides:
      run_gsc_jax(args, tree, seed)
  result = comparison(args, task)
  result["evaluation_check"] = evaluation_check(args, tree, task)
  result["train_checks"] = [check for step in ([0, 1] if args.method == "mib" else [0])
                            if (check := train_check(args, tree, task, step)) is not None]
  result["data_check"] = data_check(args, tree)
  with open(os.path.join(args.out, "comparison.json"), "w", encoding="utf-8") as file:
    json.dump(result, file, indent=1)
  table = markdown(result, args)
  with open(os.path.join(args.out, "comparison.md"), "w", encoding="utf-8") as file:
    file.write(table)
  print(table)


if __name__ == "__main__":
  try:
    main()
  except errors.InputError as error:
    sys.exit(f"error: {error}")

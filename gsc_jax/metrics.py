"""Segmentation metrics (docs/algorithm.md 1.8) and the results files of a run.

One confusion matrix over the whole test set, indexed by output CHANNEL (see
``tasks.channel_order``): rows are ground truth, columns are predictions; pixels whose label
is outside [0, K) (255 = ignore) are skipped. Per class

    IoU_c = TP_c / (TP_c + FP_c + FN_c + 1e-6)

and mIoU is the mean IoU over the classes with at least one ground-truth pixel.
``summarize_step`` maps channels back to class ids and reports "all" (mIoU over the seen
classes), "old" (the classes of step 0, background included), "new" (the other seen
classes) and one mean per step group; "avg" is the mean over steps of "all".

Units: the summaries computed here, ``step_<t>/metrics.json`` and the evaluation records of
log.jsonl hold fractions in [0, 1]; everything a person reads holds percent: the console,
TensorBoard, ``results.csv`` (its headers say "(%)") and ``summary.json`` (``"miou_unit":
"percent"``). ``read_summary_json`` reads both that and the fractions of files written
before the unit was recorded.
"""

import csv
import io
import json

import jax.numpy as jnp
import numpy as np

from gsc_jax import errors
from gsc_jax import storage
from gsc_jax import tasks

IOU_EPSILON = 1e-6
MAX_COLUMN_NAME = 12  # longer group labels (non-natural class orders) become "step<k>"


# --- confusion matrix and IoU ----------------------------------------------------------------

def confusion_matrix(labels, predictions, num_classes: int) -> jnp.ndarray:
  """int32 [K, K]: entry (g, p) counts the pixels with ground truth g predicted as p.

  Pixels whose label is outside [0, K) are skipped (so are predictions outside [0, K),
  which argmax over K channels never produces). Uses a masked bincount of length K*K, so it
  works under ``jax.jit`` (no boolean indexing).
  """
  labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
  predictions = jnp.asarray(predictions).reshape(-1).astype(jnp.int32)
  valid = ((labels >= 0) & (labels < num_classes)
           & (predictions >= 0) & (predictions < num_classes))
  flat_index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jnp.bincount(flat_index, weights=valid.astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def class_iou(confusion) -> np.ndarray:
  """float64 [K]: TP / (TP + FP + FN + 1e-6) per class (row = ground truth)."""
  confusion = np.asarray(confusion, dtype=np.float64)
  true_positives = np.diag(confusion)
  false_positives = confusion.sum(axis=0) - true_positives
  false_negatives = confusion.sum(axis=1) - true_positives
  return true_positives / (true_positives + false_positives + false_negatives + IOU_EPSILON)


def has_ground_truth(confusion) -> np.ndarray:
  """bool [K]: whether each class has at least one ground-truth pixel."""
  return np.asarray(confusion).sum(axis=1) > 0


def mean_iou(confusion) -> float | None:
  """Mean IoU over the classes with at least one ground-truth pixel (None if there are none)."""
  present = has_ground_truth(confusion)
  if not present.any():
    return None
  return float(class_iou(confusion)[present].mean())


# --- per-step summary ------------------------------------------------------------------------

def group_label(class_ids) -> str:
  """"a-b" for a contiguous range a..b, "c" for one class, "c1,c2,..." (in step order) for
  others, "none" for no class (a domain-incremental step)."""
  class_ids = [int(c) for c in class_ids]
  if not class_ids:
    return "none"
  if len(class_ids) == 1:
    return str(class_ids[0])
  if class_ids == list(range(class_ids[0], class_ids[0] + len(class_ids))):
    return f"{class_ids[0]}-{class_ids[-1]}"
  return ",".join(str(c) for c in class_ids)


def _mean_or_none(values: list) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def summarize_step(confusion, task: tasks.Task, step: int) -> dict:
  """The evaluation after ``step`` from its channel-indexed confusion matrix.

  Returns ``{"step", "iou", "all", "old", "new", "groups"}``: ``iou`` maps every class id of
  the dataset to its IoU, or None when the class is not seen yet or has no ground-truth
  pixel; "all" = mean over the seen classes with ground truth; "old" = mean over the classes
  of step 0 (background included) with ground truth; "new" = mean over the other seen
  classes with ground truth (None at step 0); ``groups`` maps the label of each step's
  classes (``group_label``) to their mean IoU.
  """
  confusion = np.asarray(confusion)
  channel_classes = tasks.channel_order(task, step)
  num_channels = len(channel_classes)
  if confusion.shape != (num_channels, num_channels):
    raise errors.InputError(f"confusion matrix of shape {confusion.shape} for step {step} of task "
                     f"{task.name!r}, which has {num_channels} channels")
  channel_iou = class_iou(confusion)
  channel_has_gt = has_ground_truth(confusion)
  iou = {class_id: None for class_id in range(task.num_classes)}
  for channel, class_id in enumerate(channel_classes):
    if channel_has_gt[channel]:
      iou[int(class_id)] = float(channel_iou[channel])

  def mean_over(class_ids):
    return _mean_or_none([iou[int(c)] for c in class_ids])

  step0_classes = set(task.steps[0])
  later_classes = [c for c in channel_classes if int(c) not in step0_classes]
  groups = {group_label(classes): mean_over(classes)
            for classes in task.steps[:step + 1] if classes}
  return {
      "step": int(step),
      "iou": iou,
      "all": mean_over(channel_classes),
      "old": mean_over(task.steps[0]),
      "new": mean_over(later_classes) if step > 0 else None,
      "groups": groups,
  }


# --- results files ---------------------------------------------------------------------------

def _class_iou_of(summary: dict, class_id: int):
  """The IoU of ``class_id`` in a summary, whether its keys are ints or (after a JSON round
  trip) strings."""
  iou = summary["iou"]
  return iou[class_id] if class_id in iou else iou.get(str(class_id))


PERCENT_UNIT = "percent"


def _format_value(value) -> str:
  """A fraction as percent with 2 decimals (the 4 decimals of the fraction); "" for None."""
  return "" if value is None else f"{100 * value:.2f}"


def write_results_csv(path: str, task: tasks.Task, step_summaries: list[dict]) -> None:
  """One row per step: step, all, old, new, the IoU of every class id, and the evaluation
  protocol in words (``evaluation_protocol``).

  Values are percent with 2 decimals; the headers say so: ``all (%)``, ``old (%)``,
  ``new (%)``, ``IoU <class id> (%)``. An empty cell is a value that does not exist: a class
  not seen yet at that step, a seen class without ground-truth pixels, or "new" at step 0.
  Every value column is therefore numeric (``pandas.read_csv`` reads the empty cells as
  NaN, ``csv`` as ""); which classes each step adds is in summary.json ("steps").
  """
  class_ids = list(range(task.num_classes))
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(["step", "all (%)", "old (%)", "new (%)"]
                  + [f"IoU {c} (%)" for c in class_ids] + ["evaluation"])
  for summary in step_summaries:
    seen = set(tasks.classes_seen(task, summary["step"]))
    per_class = [_format_value(_class_iou_of(summary, c) if c in seen else None)
                 for c in class_ids]
    writer.writerow([summary["step"]] + [_format_value(summary.get(key))
                                         for key in ("all", "old", "new")] + per_class
                    + [summary.get("evaluation", "")])
  storage.write_text(path, text.getvalue())


def evaluation_protocol(data_config) -> str:
  """How the test images were scored, in words (stated with every result)."""
  if data_config.eval_mode == "center_crop":
    preprocessing = (f"shorter side resized to {data_config.eval_size}, centre crop "
                     f"{data_config.eval_size}x{data_config.eval_size}")
  else:
    preprocessing = f"full image (padded to {data_config.eval_size}, padding ignored)"
  class_0 = "class 0 ignored" if data_config.eval_ignore_background else "class 0 scored"
  unseen = ("classes not seen yet scored as background" if data_config.eval_unseen ==
            "background" else "classes not seen yet ignored")
  return f"{preprocessing}; {class_0}; {unseen}"


def average_over_steps(step_summaries: list[dict]) -> float | None:
  """"avg": the mean over steps of the "all" mIoU measured after each step."""
  return _mean_or_none([summary.get("all") for summary in step_summaries])


def _scaled_summary(summary: dict, factor: float) -> dict:
  """A step summary with all / old / new, the groups and the per-class IoU times
  ``factor``."""
  def scaled(value):
    return None if value is None else factor * value
  converted = dict(summary)
  for key in ("all", "old", "new", "avg"):
    if key in summary:
      converted[key] = scaled(summary[key])
  for key in ("groups", "iou"):
    if summary.get(key) is not None:
      converted[key] = {name: scaled(value) for name, value in summary[key].items()}
  return converted


def write_summary_json(path: str, task: tasks.Task, step_summaries: list[dict]) -> None:
  """The run's results, in percent (``"miou_unit": "percent"``): task, "avg", the last
  evaluated step's all/old/new/groups and every step's summary. ``num_steps_evaluated`` <
  ``num_steps`` marks a partial run."""
  average = average_over_steps(step_summaries)
  step_summaries = [_scaled_summary(summary, 100) for summary in step_summaries]
  last = step_summaries[-1] if step_summaries else {}
  result = {
      "miou_unit": PERCENT_UNIT,
      "dataset": task.dataset,
      "task": task.name,
      "steps": [list(classes) for classes in task.steps],
      "num_steps": len(task.steps),
      "num_steps_evaluated": len(step_summaries),
      "evaluation": last.get("evaluation"),
      "avg": None if average is None else 100 * average,
      "last_step": last.get("step"),
      "all": last.get("all"),
      "old": last.get("old"),
      "new": last.get("new"),
      "groups": last.get("groups"),
      "per_step": step_summaries,
  }
  storage.write_text(path, json.dumps(result, indent=2))


def read_summary_json(path: str) -> dict:
  """``summary.json`` with every mIoU as a fraction (the unit of the code), from a file in
  percent (``"miou_unit": "percent"``) or from one written before the unit was recorded
  (fractions)."""
  result = json.loads(storage.read_text(path))
  if result.pop("miou_unit", None) != PERCENT_UNIT:
    return result
  converted = _scaled_summary(result, 0.01)
  converted["per_step"] = [_scaled_summary(step, 0.01) for step in result["per_step"]]
  return converted


def percent(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def format_table(task: tasks.Task, step_summaries: list[dict]) -> str:
  """A readable table: one row per step with all/old/new and the mean IoU of each step
  group, then "avg" (mean over steps of all); values in percent with one decimal."""
  group_names = [group_label(classes) for classes in task.steps if classes]
  header = ["step", "all", "old", "new"] + [
      _column_name(step, name) for step, name in enumerate(group_names)]
  rows = [header]
  for summary in step_summaries:
    groups = summary.get("groups") or {}
    rows.append([str(summary["step"])]
                + [percent(summary.get(key)) for key in ("all", "old", "new")]
                + [percent(groups.get(name)) for name in group_names])
  rows.append(["avg", percent(average_over_steps(step_summaries))])
  widths = [max(len(row[column]) for row in rows if column < len(row))
            for column in range(len(header))]
  lines = [f"{task.dataset} {task.name}: mIoU (%) after each step"]
  evaluations = {summary["evaluation"] for summary in step_summaries if "evaluation" in summary}
  lines += [f"evaluation: {evaluation}" for evaluation in sorted(evaluations)]
  for row in rows:
    lines.append("  ".join(cell.rjust(widths[column])
                           for column, cell in enumerate(row)).rstrip())
  return "\n".join(lines)


def _column_name(step: int, group_name: str) -> str:
  """The group's label as table header, or "step<k>" when the label is a long id list."""
  return group_name if len(group_name) <= MAX_COLUMN_NAME else f"step{step}"


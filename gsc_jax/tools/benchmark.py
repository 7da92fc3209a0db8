"""Runs a benchmark config's grid of (task, method, seed) and writes its markdown table.

  python -m gsc_jax.tools.benchmark --benchmark=configs/synthetic_benchmark.py --workdir=runs/benchmark

The config module provides ``get_config(arg)``, ``SEEDS``, ``STEP0_METHOD`` and ``RUNS``
(per task, the table rows: a name and the config overrides), and optionally ``ORDERING``
(a task and the row names in their expected order of final "all" mIoU, checked per seed). Step 0 of every (task, seed)
is trained once with ``STEP0_METHOD`` and reused by every row (``init_step0_from``); the
offline task is a single step and is run as is. Runs go one after another in this process;
a finished run is skipped, so the same command resumes an interrupted benchmark (an
interrupted run resumes from its last checkpoint). Compiled programs are kept in the
persistent compilation cache (``--compilation_cache``, gsc_jax/compilation_cache.py), so
that later runs and seeds skip XLA compilation.

Output: ``<workdir>/benchmark.md`` (the tables, the ordering verdict and the logged
diagnostics of the pseudo-labelling and compensation), one plot per task of every method's mIoU per step
(``<workdir>/<task>.png``) and, with ``--docs``, the same table in ``docs/benchmark.md`` and
between the benchmark markers of ``README.md``, and the plots in ``docs/images/``.
"""

import json
import os
import shutil
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from configs import common
from gsc_jax import checkpoint
from gsc_jax import compilation_cache
from gsc_jax import metrics
from gsc_jax import pictures
from gsc_jax import reporting
from gsc_jax import train
from gsc_jax import workdir as workdir_lib
from gsc_jax import errors

_BENCHMARK = flags.DEFINE_string(
    "benchmark", "configs/synthetic_benchmark.py",
    "benchmark config module (get_config, SEEDS, STEP0_METHOD, RUNS)")
_SEEDS = flags.DEFINE_list("seeds", None, "override the config's SEEDS (e.g. for tuning)")
_WORKDIR = flags.DEFINE_string("workdir", "runs/benchmark", "where every run's work dir goes")
_DOCS = flags.DEFINE_bool("docs", False, "also write docs/benchmark.md and the README table")

README_START = "<!-- benchmark table start -->"
README_END = "<!-- benchmark table end -->"


def load_module(path: str):
  module = common.load_config_file(path)
  for name in ("get_config", "SEEDS", "STEP0_METHOD", "RUNS"):
    if not hasattr(module, name):
      raise errors.InputError(f"benchmark config {path!r} has no {name}")
  return module


def run_name(row_name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in row_name.lower()).strip("_")


def timed_run(config, workdir: str) -> tuple[dict, float]:
  """Trains and evaluates one config (resuming); returns its summary and its wall time in
  seconds, accumulated over restarts. A finished run is only read back."""
  timing_path = os.path.join(workdir, "wall_time.json")
  timing = {"seconds": 0.0, "finished": False}
  if os.path.exists(timing_path):
    timing = checkpoint.read_json(timing_path)
  if not timing["finished"]:
    start = time.time()
    try:
      train.train_and_evaluate(config, workdir_lib.prepare(config, workdir))
      timing["finished"] = True
    finally:
      timing["seconds"] += time.time() - start
      os.makedirs(workdir, exist_ok=True)
      checkpoint.write_json(timing_path, timing)
  return metrics.read_summary_json(os.path.join(workdir, "summary.json")), timing["seconds"]


def plan(module, seeds) -> list[tuple]:
  """Every run in order: (task, row name or None for a shared step 0, seed, config
  argument, work dir relative to the benchmark's, shared step-0 work dir or None)."""
  runs = []
  for seed in seeds:
    for task, rows in module.RUNS.items():
      step0 = None
      if task != "offline":
        step0 = f"{task}/seed{seed}/step0"
        runs.append((task, None, seed,
                     f"{task},method={module.STEP0_METHOD},seed={seed},last_step=0", step0,
                     None))
      for row_name, overrides in rows:
        runs.append((task, row_name, seed, f"{task},{overrides},seed={seed}",
                     f"{task}/seed{seed}/{run_name(row_name)}", step0))
  return runs


def _mean_spread(values) -> str:
  values = [100 * v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def table(module, results: dict, seeds) -> str:
  """Markdown: per task and row, final old / new / all and avg (mean ± std over seeds),
  the number of seeds finished, and the mean wall time of the row's run per seed."""
  lines = []
  for task, rows in module.RUNS.items():
    lines += [f"**{task}**", "",
              "| method | old | new | all | avg | seeds | minutes per seed |",
              "|---|---|---|---|---|---|---|"]
    for row_name, _ in rows:
      finished = [results[(task, row_name, seed)] for seed in seeds
                  if (task, row_name, seed) in results]
      minutes = [seconds / 60 for _, seconds in finished]
      lines.append(
          f"| {row_name} | {_mean_spread([summary['old'] for summary, _ in finished])} | "
          f"{_mean_spread([summary['new'] for summary, _ in finished])} | "
          f"{_mean_spread([summary['all'] for summary, _ in finished])} | "
          f"{_mean_spread([summary['avg'] for summary, _ in finished])} | "
          f"{len(finished)}/{len(seeds)} | "
          f"{np.mean(minutes) if minutes else float('nan'):.1f} |")
    lines.append("")
  return "\n".join(lines)


def ordering_verdict(module, results: dict, seeds) -> str:
  """Per seed, whether the final "all" mIoU of ``module.ORDERING``'s rows rises in the
  listed order, and which adjacent pairs are inverted."""
  if not hasattr(module, "ORDERING"):
    return ""
  task, names = module.ORDERING
  lines = [f"Expected ordering on {task} (final \"all\"): {' < '.join(names)}."]
  for seed in seeds:
    if not all((task, name, seed) in results for name in names):
      lines.append(f"- seed {seed}: not every run has finished")
      continue
    values = [100 * results[(task, name, seed)][0]["all"] for name in names]
    shown = ", ".join(f"{name} {value:.1f}" for name, value in zip(names, values))
    inverted = [f"{low} >= {high}" for low, high, a, b in
                zip(names, names[1:], values, values[1:]) if a >= b]
    verdict = "holds" if not inverted else f"inverted: {'; '.join(inverted)}"
    lines.append(f"- seed {seed}: {verdict} ({shown})")
  return "\n".join(lines) + "\n"


def run_diagnostics(log_path: str) -> dict:
  """Means over the logged iterations of a run's incremental steps: nu (the share of
  background pixels given a pseudo-label), and, with compensation, the mean weight of the
  old classes' pixels, the largest weight, and the current step's share of the
  cross-entropy's logit-gradient mass. The log is read as its final history
  (``reporting.read_log_file``: iterations re-run after a restart count once); values
  logged as null (non-finite) are left out of the means."""
  records = [r for r in reporting.read_log_file(log_path)
             if "loss" in r and r.get("step", 0) > 0]
  found = {}
  if records and "nu" in records[0]:
    found["nu"] = _mean_of_logged([r["nu"] for r in records])
  if records and "weight_mean" in records[0]:
    found["old_weight_mean"] = _mean_of_logged(
        [_mean_of_logged(r["weight_mean"][:-1]) for r in records])
    found["weight_max"] = _max_of_logged([_max_of_logged(r["weight_max"]) for r in records])
    found["new_gradient_share"] = _mean_of_logged([r["gradient_share"][-1] for r in records])
  return found


def _reduce_logged(values, reduce) -> float:
  """``reduce`` (np.mean, np.max) of the logged values that are not null (a non-finite
  value); NaN when all are null."""
  floats = np.asarray([np.nan if v is None else v
                       for v in np.ravel(np.asarray(values, object))], np.float64)
  finite = floats[np.isfinite(floats)]
  return float(reduce(finite)) if finite.size else float("nan")


def _mean_of_logged(values) -> float:
  return _reduce_logged(values, np.mean)


def _max_of_logged(values) -> float:
  return _reduce_logged(values, np.max)


def diagnostics_table(module, run_dirs: dict, seeds) -> str:
  """Markdown: per task and row with pseudo-labels or compensation, the means over seeds of
  ``run_diagnostics``."""
  columns = (("nu", "nu"), ("old_weight_mean", "old-class mean weight"),
             ("weight_max", "largest weight"), ("new_gradient_share", "new-class gradient share"))
  lines = []
  for task, rows in module.RUNS.items():
    table_rows = []
    for row_name, _ in rows:
      found = [run_diagnostics(os.path.join(run_dirs[(task, row_name, seed)], "log.jsonl"))
               for seed in seeds if (task, row_name, seed) in run_dirs]
      found = [f for f in found if f]
      if found:
        cells = []
        for key, _ in columns:
          values = [f[key] for f in found if key in f]
          cells.append(f"{np.mean(values):.2f}" if values else "-")
        table_rows.append(f"| {row_name} | " + " | ".join(cells) + " |")
    if table_rows:
      lines += [f"**{task}**: logged diagnostics, mean over iterations of the incremental "
                "steps and over seeds", "",
                "| method | " + " | ".join(name for _, name in columns) + " |",
                "|---|" + "---|" * len(columns)] + table_rows + [""]
  return "\n".join(lines)


def mean_step_summaries(summaries: list[dict]) -> list[dict]:
  """Per step, the mean over seeds of all / old / new (None where a seed has none)."""
  steps = []
  for per_seed in zip(*[summary["per_step"] for summary in summaries]):
    mean = {"step": per_seed[0]["step"]}
    for group in ("all", "old", "new"):
      values = [s[group] for s in per_seed if s[group] is not None]
      mean[group] = float(np.mean(values)) if values else None
    steps.append(mean)
  return steps


def plot_methods(module, results: dict, seeds, directory: str) -> list[str]:
  """One PNG per task (``<directory>/<task>.png``): mIoU all / old / new per step of every
  row, mean over the finished seeds (tasks with no finished run are left out). Returns
  the paths."""
  paths = []
  for task, rows in module.RUNS.items():
    per_method = {}
    for row_name, _ in rows:
      finished = [results[(task, row_name, seed)][0] for seed in seeds
                  if (task, row_name, seed) in results]
      if finished:
        per_method[row_name] = mean_step_summaries(finished)
    if not per_method:
      continue
    path = os.path.join(directory, f"{run_name(task)}.png")
    over = (f"seed {seeds[0]}" if len(seeds) == 1
            else f"mean over seeds {', '.join(map(str, seeds))}")
    pictures.methods_plot(per_method, f"synthetic {task}: {over}", path)
    paths.append(path)
  return paths


def replace_between_markers(path: str, text: str) -> None:
  with open(path) as f:
    content = f.read()
  if README_START not in content or README_END not in content:
    raise errors.InputError(f"{path} lacks the markers {README_START} / {README_END}")
  head, rest = content.split(README_START, 1)
  _, tail = rest.split(README_END, 1)
  with open(path, "w") as f:
    f.write(f"{head}{README_START}\n{text}\n{README_END}{tail}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    module = load_module(_BENCHMARK.value)
  except (FileNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from None
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else list(module.SEEDS)
  workdir = os.path.abspath(_WORKDIR.value)
  compilation_cache.enable_from_flag()
  runs = plan(module, seeds)
  results, step0_seconds, run_dirs = {}, {}, {}
  start = time.time()
  for index, (task, row_name, seed, argument, suffix, step0) in enumerate(runs):
    label = f"{task} seed {seed} {row_name or 'shared step 0'}"
    print(f"\n=== [{index + 1}/{len(runs)}] {label} ({(time.time() - start) / 60:.1f} min "
          "elapsed)", flush=True)
    if step0 is not None and row_name is not None:
      argument += f",init_step0_from={os.path.join(workdir, step0)}"
    config = module.get_config(argument)
    run_dir = os.path.join(workdir, suffix)
    summary, seconds = timed_run(config, run_dir)
    if row_name is None:
      step0_seconds[(task, seed)] = seconds
    else:
      results[(task, row_name, seed)] = (summary, seconds)
      run_dirs[(task, row_name, seed)] = run_dir
  markdown = table(module, results, seeds)
  step0_minutes = np.mean(list(step0_seconds.values())) / 60 if step0_seconds else 0.0
  total_minutes = (sum(seconds for _, seconds in results.values())
                   + sum(step0_seconds.values())) / 60
  markdown += (f"\nFinal step mIoU (%), mean ± std over seeds {', '.join(map(str, seeds))}; "
               f"\"avg\" is the mean over steps of the all-class mIoU. Minutes per seed "
               f"exclude the shared step 0 ({step0_minutes:.1f} min per task and seed). "
               f"Whole benchmark: {total_minutes:.0f} min of run time. Evaluation: "
               f"{next(iter(results.values()))[0].get('evaluation') if results else '-'}.\n")
  markdown += "\n" + ordering_verdict(module, results, seeds)
  markdown += "\n" + diagnostics_table(module, run_dirs, seeds)
  path = os.path.join(workdir, "benchmark.md")
  with open(path, "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({f"{t}|{r}|{s}": {"summary": v[0], "seconds": v[1]}
               for (t, r, s), v in results.items()}, f, indent=1)
  plots = plot_methods(module, results, seeds, workdir)
  print("\n" + markdown)
  print(f"wrote {path} and {', '.join(plots)}")
  if _DOCS.value:
    replace_between_markers("docs/benchmark.md", markdown)
    replace_between_markers("README.md", markdown)
    for plot in plots:
      shutil.copy(plot, os.path.join("docs", "images", f"benchmark_{os.path.basename(plot)}"))


if __name__ == "__main__":
  app.run(main)

"""Measures the speed and memory of the program's own pieces, in one run, for one config.

  python -m gsc_jax.tools.performance --config=configs/synthetic.py:15-1
  python -m gsc_jax.tools.performance --config=configs/synthetic.py:15-1 \\
      --settings=tiny,r50_256,r101_512 --repetitions=5 --output_dir=runs/performance

Settings (``SETTINGS``): ``tiny`` is the config's own model, crop and batch
(configs/synthetic.py: resnet_tiny, crop 128, batch 16); ``r50_256`` is ResNet-50, crop
256, batch 2 and ``r101_512`` ResNet-101, crop 512, batch 1, both with the VOC config's
head (256 channels, output stride 16) and the config's data. Per setting it measures:

1. the train step of step 0 (plain cross-entropy, SGD: every method's step 0): seconds
   and images/s, the median of ``--repetitions`` after two warm-up steps;
2. its FLOPs from XLA's cost analysis of the compiled program, divided by the measured
   step time, and the ratio of that to the peak of a jitted float32 matmul measured in the
   same run (``--matmul_size``; 4096 x 4096 on CPU), timed in the same rounds as the step;
3. compile time: step 0's train step (``lower`` + ``compile``), and the train step of
   ``--step`` (its model and teacher) for each method (trace + lowering + XLA compile of
   the jitted function's first call, from ``jax.monitoring`` events), always without the
   persistent compilation cache, which would hide them;
4. model init: ``step_model.initial_variables`` as train.py calls it (step 0: the full
   initialisation; step ``--step``: grown from the teacher);
5. evaluation images/s of ``evaluation.make_eval_step`` at the config's eval size;
6. the input pipeline: images/s of the step-0 train dataset (``train.step_train_dataset``:
   grain reading, labels, augmentation, batching, global arrays), against the images/s the
   train step consumes, and their ratio;
7. memory: the process's peak resident set (``getrusage``, for the whole run so far),
   XLA's compiled memory analysis of the train step (temporaries, arguments, outputs) and,
   on GPU/TPU, the device's ``peak_bytes_in_use``;
8. the train step of ``--step`` for every method of ``--methods``, timed in interleaved
   rounds (each round starting with the next method), and each one's ratio to
   fine-tuning;
9. the number of XLA compilations during the timed iterations (0 expected: a
   recompilation inside the train loop is a bug);
10. with ``--torch`` (default: when torch is importable), the same step-0 train step in
    PyTorch (gsc_jax/tools/torch_deeplab.py: the same network layer by layer, the same
    loss, SGD and batch), timed interleaved with the JAX step (JAX, torch, JAX, ...), and
    the JAX / PyTorch ratio. The two parameter counts are printed and must be equal.

The random batches and models do not change the cost: every shape is that of the config.
The table is printed and written as ``<output_dir>/performance.md`` and
``<output_dir>/performance.json``.
On CPU the XLA convolution flag of gsc_jax/platform_flags.py is set, as for
``python -m gsc_jax.main``.
"""

import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time

from gsc_jax import compilation_cache
from gsc_jax import platform_flags

platform_flags.set_default_cpu_flags()  # before jax starts its backend

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from configs import common
from gsc_jax import evaluation
from gsc_jax import mesh as mesh_lib
from gsc_jax import methods
from gsc_jax import tasks
from gsc_jax import train
from gsc_jax import train_step as train_step_lib
from gsc_jax.data import pipeline
from gsc_jax.data import splits
from gsc_jax.models import step_model
# pylint: enable=wrong-import-position

_CONFIG = flags.DEFINE_string("config", "configs/synthetic.py:15-1",
                              "config file and argument, as for gsc_jax.main")
_SETTINGS = flags.DEFINE_list("settings", ["tiny", "r50_256", "r101_512"],
                              "model settings to measure (SETTINGS)")
_REPETITIONS = flags.DEFINE_integer("repetitions", 5, "timed repetitions per measurement")
_METHODS = flags.DEFINE_list("methods", ["ft", "mib", "plop", "gsc"],
                             "methods whose train step of --step is timed")
_STEP = flags.DEFINE_integer("step", 1, "incremental step of the method comparison (>= 1)")
_TORCH = flags.DEFINE_bool("torch", None, "time the PyTorch reference step (default: when "
                           "torch is importable)")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 0, "side of the square float32 matmul of "
                                    "the peak (0: 4096 on CPU, 8192 otherwise)")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/performance",
                                  "directory of the markdown and JSON")

WARMUP_STEPS = 2
MIB = 2 ** 20
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Setting:
  """A model, crop and batch to measure; None keeps the config's value."""
  name: str
  backbone: str | None = None
  crop_size: int | None = None
  batch_size: int | None = None
  head_channels: int | None = None
  eval_batch_size: int | None = None


SETTINGS = {
    "tiny": Setting("tiny"),
    # configs/voc.py's head (the base config's 256 channels, output stride 16); the eval
    # batch is the train batch, so that CPU runs stay short.
    "r50_256": Setting("r50_256", backbone="resnet50", crop_size=256, batch_size=2,
                       head_channels=256, eval_batch_size=2),
    "r101_512": Setting("r101_512", backbone="resnet101", crop_size=512, batch_size=1,
                        head_channels=256, eval_batch_size=1),
}

# (key, label, format) of every row of the table, in order. The keys of REQUIRED_ROWS
# always hold a number; the torch rows only with --torch; device_peak only on GPU/TPU.
ROWS = (
    ("backbone", "backbone", "{}"),
    ("crop_size", "crop", "{}"),
    ("batch_size", "batch", "{}"),
    ("jax_parameters", "parameters (JAX)", "{:,}"),
    ("torch_parameters", "parameters (PyTorch reference)", "{:,}"),
    ("step_seconds", "train step, step 0 (s, median)", "{:.3f}"),
    ("step_images_per_second", "train step images/s", "{:.1f}"),
    ("step_gflop", "train step GFLOP (XLA cost analysis)", "{:.1f}"),
    ("achieved_gflops", "achieved GFLOP/s", "{:.1f}"),
    ("matmul_size", "matmul side (float32, square)", "{}"),
    ("matmul_gflops", "matmul peak GFLOP/s (interleaved)", "{:.1f}"),
    ("fraction_of_peak", "fraction of matmul peak", "{:.0%}"),
    ("lower_seconds_step0", "lowering, step 0 train step (s)", "{:.1f}"),
    ("compile_seconds_step0", "XLA compile, step 0 train step (s)", "{:.1f}"),
    ("compile_seconds_step_methods", "trace + compile, step-{step} train step (s)", "{}"),
    ("init_seconds_step0", "model init, step 0 (s)", "{:.1f}"),
    ("init_seconds_step", "model init, step {step} (grown, s)", "{:.1f}"),
    ("eval_images_per_second", "eval images/s", "{:.1f}"),
    ("pipeline_images_per_second", "input pipeline images/s", "{:.1f}"),
    ("consumed_images_per_second", "images/s the train step consumes", "{:.1f}"),
    ("pipeline_ratio", "input pipeline / consumption", "{:.1f}"),
    ("max_rss_gib", "peak RSS of the process so far (GiB)", "{:.2f}"),
    ("xla_temp_mib", "XLA temporaries, train step (MiB)", "{:.0f}"),
    ("xla_argument_mib", "XLA arguments, train step (MiB)", "{:.0f}"),
    ("xla_output_mib", "XLA outputs, train step (MiB)", "{:.0f}"),
    ("device_peak_gib", "device peak bytes in use (GiB)", "{:.2f}"),
    ("method_ms", "step-{step} train step, ms (median)", "{}"),
    ("method_ratio", "step-{step} time / ft", "{}"),
    ("compilations_timed", "compilations during timed iterations", "{}"),
    ("jax_interleaved_seconds", "JAX step, interleaved with PyTorch (s)", "{:.3f}"),
    ("torch_seconds", "PyTorch step, interleaved (s)", "{:.3f}"),
    ("jax_torch_ratio", "JAX / PyTorch step time", "{:.2f}"),
)
REQUIRED_ROWS = ("jax_parameters", "step_seconds", "step_images_per_second", "step_gflop",
                 "achieved_gflops", "matmul_gflops", "fraction_of_peak",
                 "lower_seconds_step0", "compile_seconds_step0", "init_seconds_step0",
                 "init_seconds_step", "eval_images_per_second",
                 "pipeline_images_per_second", "consumed_images_per_second",
                 "pipeline_ratio", "max_rss_gib", "xla_temp_mib", "xla_argument_mib",
                 "xla_output_mib")
TORCH_ROWS = ("torch_parameters", "jax_interleaved_seconds", "torch_seconds",
              "jax_torch_ratio")


def progress(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- counting compilations ---------------------------------------------------------------

class CompileEvents:
  """Counts XLA compilations and sums the compile-path durations JAX reports."""
  COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                    "/jax/core/compile/jaxpr_to_mlir_module_duration",
                    "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    self.compilations = 0
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del kwargs
    if event == self.COMPILE_EVENTS[-1]:
      self.compilations += 1
    if event in self.COMPILE_EVENTS:
      self.seconds += duration


_EVENTS = None


def compile_events() -> CompileEvents:
  global _EVENTS  # pylint: disable=global-statement
  if _EVENTS is None:
    _EVENTS = CompileEvents()
  return _EVENTS


# --- config and inputs ---------------------------------------------------------------------

def load_config(config_flag: str, setting: Setting, method: str | None = None):
  """The config of ``--config`` with ``setting``'s model, crop and batch, the method's
  preset resolved."""
  path, _, argument = config_flag.partition(":")
  argument = argument or "15-1"
  if method is not None:
    argument += f",method={method}"
  config = common.load_config_file(path).get_config(argument)
  if setting.backbone is not None:
    config.model.backbone = setting.backbone
  if setting.head_channels is not None:
    config.model.head_channels = setting.head_channels
  if setting.crop_size is not None:
    config.data.crop_size = setting.crop_size
    config.data.eval_size = setting.crop_size
    if config.dataset == "synthetic":  # images as large as the crop, as real data would be
      config.data.image_size = max(config.data.image_size, setting.crop_size)
  if setting.batch_size is not None:
    config.optim.batch_size = setting.batch_size
  if setting.eval_batch_size is not None:
    config.data.eval_batch_size = setting.eval_batch_size
  methods.resolve_preset(config)
  return config


def random_batch(batch_size: int, size: int, num_channels: int, mesh, seed: int = 0):
  """Images (normal noise) and labels drawn from background, the last channel and void."""
  rng = np.random.default_rng(seed)
  labels = rng.choice([0, num_channels - 1, tasks.IGNORE_LABEL], size=(batch_size, size, size),
                      p=[0.7, 0.25, 0.05]).astype(np.int32)
  images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  return mesh_lib.to_global_batch({"image": images, "label": labels}, mesh)


def frozen_inputs(config, facts, teacher_variables, mesh) -> dict:
  """What the train step of ``facts.step`` reads besides its state: the teacher and every
  method's pass results (random values: the cost does not depend on them)."""
  if not facts.has_teacher:
    return {}
  num_old = facts.num_old_classes
  rng = np.random.default_rng(3)
  passes = {"thresholds": np.full((1, num_old), 0.01, np.float32),
            "prototypes": rng.normal(size=(num_old, config.model.head_channels)).astype(
                np.float32),
            "prototype_seen": np.ones(num_old, bool)}
  return {"teacher": teacher_variables, **mesh_lib.replicate(passes, mesh)}


def parameter_count(variables) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"])))


def block(tree):
  return jax.block_until_ready(tree)


# --- the measurements ----------------------------------------------------------------------

@dataclasses.dataclass
class TrainProgram:
  """A jitted train step with its inputs, ready to run."""
  config: object
  facts: tasks.StepFacts
  model: object
  jitted: object
  state: dict
  frozen: dict
  batch: dict
  init_seconds: float
  first_call_seconds: float = 0.0  # trace + lowering + compile of the first call

  def run(self):
    self.state, scalars = self.jitted(self.state, self.frozen, self.batch)
    block((self.state, scalars))


def build_train_program(config, step: int, mesh, teacher_variables=None) -> TrainProgram:
  """The train step of ``step`` as train.py builds it (the jitted step with its state
  donated), its variables from ``step_model.initial_variables`` (timed)."""
  facts = tasks.step_facts(tasks.task_of(config), step)
  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model = None
  if facts.has_teacher:
    teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
  method = methods.build(config, facts, model, teacher_model)
  start = time.perf_counter()
  variables = block(step_model.initial_variables(config, facts, model, teacher_variables, mesh,
                                                 progress))
  init_seconds = time.perf_counter() - start
  optimizer, _ = train_step_lib.make_optimizer(config.optim, config.optim.lr_incremental, 1000)
  jitted = jax.jit(train_step_lib.make_train_step(model, teacher_model, method, optimizer,
                                                  iterations_per_epoch=1000),
                   donate_argnums=(0,))
  state = jax.jit(lambda v: train_step_lib.create_train_state(v, optimizer, method),
                  out_shardings=mesh_lib.replicated(mesh))(variables)
  frozen = frozen_inputs(config, facts, teacher_variables, mesh)
  batch = random_batch(config.optim.batch_size, config.data.crop_size,
                       facts.num_classes, mesh)
  return TrainProgram(config, facts, model, jitted, state, frozen, batch, init_seconds)


def warm_up(program: TrainProgram) -> None:
  """The warm-up steps; the first one's compile-path time is kept."""
  events = compile_events()
  before = events.seconds
  for _ in range(WARMUP_STEPS):
    program.run()
  program.first_call_seconds = events.seconds - before


def timed(function) -> float:
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def cost_of(compiled) -> dict:
  """FLOPs and memory sizes of a compiled program (XLA's own analyses)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  memory = compiled.memory_analysis()
  return {"flops": float(cost.get("flops", float("nan"))),
          "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
          "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
          "output_bytes": getattr(memory, "output_size_in_bytes", None)}


def matmul_program(size: int = 0):
  """``(size, run)``: a compiled float32 ``size x size`` matmul on random inputs (0: 4096
  on CPU, 8192 otherwise) and a function that runs it once and waits for it."""
  if size <= 0:
    size = 4096 if jax.default_backend() == "cpu" else 8192
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (size, size), jnp.float32)
  b = jax.random.normal(keys[1], (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  block(matmul(a, b))
  return size, lambda: block(matmul(a, b))


def matmul_peak(size: int = 0, repetitions: int = 5) -> dict:
  """GFLOP/s of a jitted float32 ``size x size`` matmul (median after one warm-up)."""
  size, run = matmul_program(size)
  seconds = statistics.median(timed(run) for _ in range(repetitions))
  return {"size": size, "seconds": seconds, "gflops": 2 * size ** 3 / seconds / 1e9}


def pipeline_rate(config, step: int, mesh, num_batches: int) -> float:
  """Images/s of the step's real train dataset (train.step_train_dataset), global arrays
  included; the first batch (start-up) is not timed."""
  task = tasks.task_of(config)
  train_source = pipeline.make_source(config, "train")
  val_source = pipeline.make_source(config, "val")
  run = train.Run(config=config, workdir="", task=task, mesh=mesh, train_source=train_source,
                  val_source=val_source,
                  step_lists=splits.StepLists(config, task, train_source, val_source),
                  events=None, stop=None)
  iterator = iter(train.step_train_dataset(run, step))
  try:
    block(mesh_lib.to_global_batch(next(iterator), mesh))
    start = time.perf_counter()
    for _ in range(num_batches):
      block(mesh_lib.to_global_batch(next(iterator), mesh))
    seconds = time.perf_counter() - start
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  return num_batches * config.optim.batch_size / seconds


def eval_rate(config, model, variables, num_channels: int, mesh, repetitions: int) -> float:
  """Images/s of the program's eval step on one batch of the config's eval size."""
  eval_step = evaluation.make_eval_step(model, num_channels)
  batch = random_batch(config.data.eval_batch_size, config.data.eval_size,
                       num_channels, mesh, seed=1)
  block(eval_step(variables, batch))
  seconds = statistics.median(timed(lambda: block(eval_step(variables, batch)))
                              for _ in range(repetitions))
  return config.data.eval_batch_size / seconds


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def torch_reference(config, facts, batch, jax_parameters: int):
  """``(step, parameter count)``: the PyTorch twin of step 0's train step on the same
  batch; raises when its parameter count differs from the JAX model's."""
  import torch  # pylint: disable=import-outside-toplevel
  from gsc_jax.tools import torch_deeplab  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  network = torch_deeplab.from_config(config, facts.classifier_sizes)
  count = torch_deeplab.parameter_count(network)
  if count != jax_parameters:
    raise RuntimeError(f"the PyTorch reference has {count:,} parameters, the JAX model "
                       f"{jax_parameters:,}: torch_deeplab.py no longer mirrors the model")
  images = torch.from_numpy(np.asarray(batch["image"]).transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
  step = torch_deeplab.make_train_step(network, config.optim, config.optim.lr_step0)
  return (lambda: step(images, labels)), count


def measure_setting(config_flag: str, setting: Setting, repetitions: int = 5,
                    method_names=("ft", "mib", "plop", "gsc"), step: int = 1,
                    use_torch: bool = False, peak: dict | None = None) -> dict:
  """Every measurement of the module docstring for one setting, as a dict of ROWS keys."""
  events = compile_events()
  mesh = mesh_lib.make_mesh()
  config = load_config(config_flag, setting)
  result = {"setting": setting.name, "backbone": config.model.backbone,
            "crop_size": config.data.crop_size, "batch_size": config.optim.batch_size,
            "step": step}
  progress(f"{setting.name}: {config.model.backbone}, crop {config.data.crop_size}, batch "
           f"{config.optim.batch_size}, output stride {config.model.output_stride}, head "
           f"{config.model.head_channels}; step-0 model init")

  # Step 0: init, compile (with XLA's analyses), warm-up.
  program = build_train_program(config, 0, mesh)
  result["init_seconds_step0"] = program.init_seconds
  result["jax_parameters"] = parameter_count(program.state)
  teacher_variables = jax.tree.map(jnp.copy, {"params": program.state["params"],
                                              "batch_stats": program.state["batch_stats"]})
  progress(f"{setting.name}: init {program.init_seconds:.1f} s, "
           f"{result['jax_parameters']:,} parameters; compiling the step-0 train step")
  start = time.perf_counter()
  lowered = program.jitted.lower(program.state, program.frozen, program.batch)
  result["lower_seconds_step0"] = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  result["compile_seconds_step0"] = time.perf_counter() - start
  cost = cost_of(compiled)
  del compiled, lowered
  result["step_gflop"] = cost["flops"] / 1e9
  for name in ("temp", "argument", "output"):
    value = cost[f"{name}_bytes"]
    result[f"xla_{name}_mib"] = None if value is None else value / MIB
  progress(f"{setting.name}: lowered in {result['lower_seconds_step0']:.1f} s, compiled in "
           f"{result['compile_seconds_step0']:.1f} s; warming up")
  warm_up(program)

  torch_step = None
  if use_torch:
    torch_step, result["torch_parameters"] = torch_reference(
        config, program.facts, program.batch, result["jax_parameters"])
    progress(f"{setting.name}: PyTorch reference with {result['torch_parameters']:,} "
             "parameters (equal); warming up")
    for _ in range(WARMUP_STEPS):
      torch_step()

  progress(f"{setting.name}: timing the step-0 train step"
           + (" interleaved with PyTorch" if torch_step else ""))
  compilations = events.compilations
  cache_size = program.jitted._cache_size()  # pylint: disable=protected-access
  # The matmul peak is timed in the same rounds, so that the fraction of it does not
  # depend on how busy a shared machine was at another moment.
  matmul_size, matmul_run = matmul_program(peak["size"] if peak else 0)
  jax_seconds, torch_seconds, matmul_seconds = [], [], []
  for _ in range(repetitions):
    jax_seconds.append(timed(program.run))
    if torch_step is not None:
      torch_seconds.append(timed(torch_step))
    matmul_seconds.append(timed(matmul_run))
  del matmul_run
  timed_compilations = events.compilations - compilations
  timed_compilations += program.jitted._cache_size() - cache_size  # pylint: disable=protected-access
  seconds = statistics.median(jax_seconds)
  result["step_seconds"] = seconds
  result["step_images_per_second"] = config.optim.batch_size / seconds
  result["achieved_gflops"] = result["step_gflop"] / seconds
  result["matmul_size"] = matmul_size
  result["matmul_gflops"] = 2 * matmul_size ** 3 / statistics.median(matmul_seconds) / 1e9
  result["fraction_of_peak"] = result["achieved_gflops"] / result["matmul_gflops"]
  if torch_step is not None:
    result["jax_interleaved_seconds"] = seconds
    result["torch_seconds"] = statistics.median(torch_seconds)
    result["jax_torch_ratio"] = seconds / result["torch_seconds"]
  progress(f"{setting.name}: step 0 {seconds:.3f} s"
           + (f", PyTorch {result['torch_seconds']:.3f} s" if torch_step else ""))

  # Evaluation, on the step-0 model's variables after training.
  variables = {"params": program.state["params"], "batch_stats": program.state["batch_stats"]}
  progress(f"{setting.name}: evaluation")
  result["eval_images_per_second"] = eval_rate(config, program.model, variables,
                                               program.facts.num_classes, mesh, repetitions)
  del variables, program, torch_step

  # Input pipeline against what the step-0 train step consumes.
  progress(f"{setting.name}: input pipeline")
  result["pipeline_images_per_second"] = pipeline_rate(config, 0, mesh,
                                                       max(8, 2 * repetitions))
  result["consumed_images_per_second"] = result["step_images_per_second"]
  result["pipeline_ratio"] = (result["pipeline_images_per_second"]
                              / result["consumed_images_per_second"])

  # Step ``step``: every method's train step, interleaved.
  programs = {}
  for name in method_names:
    progress(f"{setting.name}: step-{step} train step of {name}: init and compile")
    method_config = load_config(config_flag, setting, name)
    programs[name] = build_train_program(method_config, step, mesh, teacher_variables)
    warm_up(programs[name])
  if programs:
    result["init_seconds_step"] = statistics.median(p.init_seconds for p in programs.values())
    result["compile_seconds_step_methods"] = {name: round(p.first_call_seconds, 1)
                                              for name, p in programs.items()}
    progress(f"{setting.name}: timing the step-{step} train steps, interleaved")
    compilations = events.compilations
    cache_sizes = {name: p.jitted._cache_size() for name, p in programs.items()}  # pylint: disable=protected-access
    per_method = {name: [] for name in programs}
    names = list(programs)
    for round_index in range(repetitions):
      # Each round starts with another method, so that no method always runs first.
      shift = round_index % len(names)
      for name in names[shift:] + names[:shift]:
        per_method[name].append(timed(programs[name].run))
    timed_compilations += events.compilations - compilations
    timed_compilations += sum(p.jitted._cache_size() - cache_sizes[name]  # pylint: disable=protected-access
                              for name, p in programs.items())
    medians = {name: statistics.median(values) for name, values in per_method.items()}
    result["method_ms"] = {name: round(1000 * value, 1) for name, value in medians.items()}
    if "ft" in medians:
      result["method_ratio"] = {name: round(value / medians["ft"], 2)
                                for name, value in medians.items()}
    progress(f"{setting.name}: step {step} ms {result['method_ms']}")
  del programs
  result["compilations_timed"] = int(timed_compilations)

  result["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      result["device_peak_gib"] = stats["peak_bytes_in_use"] / GIB
  return result


# --- the report ------------------------------------------------------------------------------

def machine_description() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:  # no /proc (not Linux): keep the platform module's name
    pass
  description = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
                 "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                 "backend": jax.default_backend(),
                 "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                 "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if torch_available():
    import torch  # pylint: disable=import-outside-toplevel
    description["torch"] = torch.__version__
    description["torch_threads"] = torch.get_num_threads()
  return description


def _format(value, template: str) -> str:
  if value is None:
    return "-"
  if isinstance(value, dict):
    return " / ".join(f"{name} {number}" for name, number in value.items())
  if isinstance(value, float) and not np.isfinite(value):
    return "nan"
  return template.format(value)


def format_table(results: list[dict]) -> str:
  """A markdown table: one row per ROWS entry, one column per setting."""
  step = results[0].get("step", 1) if results else 1
  lines = ["| measurement | " + " | ".join(r["setting"] for r in results) + " |",
           "|---|" + "---|" * len(results)]
  for key, label, template in ROWS:
    if all(r.get(key) is None for r in results):
      continue
    cells = [_format(r.get(key), template) for r in results]
    lines.append(f"| {label.format(step=step)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_report(out: str, command: str, machine: dict, peak: dict,
                 results: list[dict]) -> tuple[str, str]:
  """``<output_dir>/performance.md`` and ``.json``; returns their paths."""
  os.makedirs(out, exist_ok=True)
  markdown_path = os.path.join(out, "performance.md")
  json_path = os.path.join(out, "performance.json")
  machine_line = ", ".join(f"{key} {value}" for key, value in machine.items())
  with open(markdown_path, "w", encoding="utf-8") as file:
    file.write(f"`{command}`\n\n{machine_line}\n\nmatmul at the start of the run: "
               f"{peak['size']} x {peak['size']} float32, {peak['gflops']:.1f} GFLOP/s\n\n"
               f"{format_table(results)}\n")
  with open(json_path, "w", encoding="utf-8") as file:
    json.dump({"command": command, "machine": machine, "matmul": peak, "settings": results},
              file, indent=1)
  return markdown_path, json_path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if flags.FLAGS["compilation_cache"].present:
    raise app.UsageError("--compilation_cache: this tool measures compile times and always "
                         "runs without the compilation cache")
  compilation_cache.enable(None)  # compile times are measured: nothing is read from a cache
  unknown = [name for name in _SETTINGS.value if name not in SETTINGS]
  if unknown:
    raise app.UsageError(f"unknown settings {unknown}; valid: {', '.join(SETTINGS)}")
  if _STEP.value < 1:
    raise app.UsageError("--step must be >= 1 (step 0 has no teacher)")
  use_torch = torch_available() if _TORCH.value is None else _TORCH.value
  if use_torch and not torch_available():
    raise app.UsageError("--torch: torch is not importable")
  command = "python -m gsc_jax.tools.performance " + " ".join(sys.argv[1:])
  machine = machine_description()
  progress("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
  peak = matmul_peak(_MATMUL_SIZE.value, _REPETITIONS.value)
  progress(f"matmul {peak['size']} x {peak['size']} float32: {peak['gflops']:.1f} GFLOP/s")
  results = []
  for name in _SETTINGS.value:
    results.append(measure_setting(_CONFIG.value, SETTINGS[name], _REPETITIONS.value,
                                   tuple(_METHODS.value), _STEP.value, use_torch, peak))
  print(format_table(results), flush=True)
  for path in write_report(_OUTPUT_DIR.value, command, machine, peak, results):
    progress(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)

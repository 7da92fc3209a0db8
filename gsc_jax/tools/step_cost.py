"""Measures one train step of each method on the same model, relative to fine-tuning.

  python -m gsc_jax.tools.step_cost --config=configs/synthetic.py:15-1 --step=1

Builds the model of ``--step`` of the config's task (a random teacher, thresholds and
prototypes: the cost does not depend on their values), jits each method's train step,
and times ``--iterations`` steps on one random batch after two warm-up steps. Prints
milliseconds per step, images per second, and the ratio to fine-tuning.
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from gsc_jax import methods
from gsc_jax import tasks
from gsc_jax import train_step as train_step_lib
from gsc_jax.models import incremental
from gsc_jax.models import step_model

_CONFIG = flags.DEFINE_string("config", "configs/synthetic.py:15-1",
                              "config file and argument, as for gsc_jax.main")
_STEP = flags.DEFINE_integer("step", 1, "incremental step whose train step is timed (>= 1)")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "timed iterations per method")
_METHODS = flags.DEFINE_list("methods", ["ft", "mib", "plop", "gsc"], "methods to time")


def load_config(method: str):
  path, _, argument = _CONFIG.value.partition(":")
  config = common.load_config_file(path).get_config(f"{argument or '15-1'},method={method}")
  methods.resolve_preset(config)
  return config


def time_method(method: str, step: int, iterations: int) -> float:
  """Seconds per train step of ``method`` at ``step``."""
  config = load_config(method)
  facts = tasks.step_facts(tasks.task_of(config), step)
  num_old = facts.num_old_classes
  model = step_model.make_model(config, facts.classifier_sizes)
  teacher_model = step_model.make_model(config, facts.teacher_classifier_sizes)
  teacher_variables = incremental.init_variables(teacher_model, jax.random.key(1))
  variables = incremental.init_variables(model, jax.random.key(2))
  optimizer, _ = train_step_lib.make_optimizer(config.optim, config.optim.lr_incremental, 1000)
  method_functions = methods.build(config, facts, model, teacher_model)
  train_step = train_step_lib.make_train_step(model, teacher_model, method_functions, optimizer,
                                              iterations_per_epoch=iterations)
  state = train_step_lib.create_train_state(variables, optimizer, method_functions)
  head_channels = config.model.head_channels
  frozen = {"teacher": teacher_variables,
            "thresholds": jnp.full((1, num_old), 0.01),
            "prototypes": jax.random.normal(jax.random.key(3), (num_old, head_channels)),
            "prototype_seen": jnp.ones(num_old, bool)}
  size, batch_size = config.data.crop_size, config.optim.batch_size
  rng = np.random.default_rng(0)
  labels = rng.choice([0, num_old, 255], size=(batch_size, size, size), p=[0.7, 0.25, 0.05])
  batch = {"image": jnp.asarray(rng.normal(size=(batch_size, size, size, 3)), jnp.float32),
           "label": jnp.asarray(labels, jnp.int32)}
  train_step = jax.jit(train_step)
  for _ in range(2):
    state, scalars = train_step(state, frozen, batch)
  jax.block_until_ready(scalars)
  start = time.perf_counter()
  for _ in range(iterations):
    state, scalars = train_step(state, frozen, batch)
  jax.block_until_ready(scalars)
  return (time.perf_counter() - start) / iterations


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _STEP.value < 1:
    raise app.UsageError("--step must be >= 1 (step 0 has no teacher)")
  config = load_config("ft")
  print(f"{_CONFIG.value}, step {_STEP.value}: backbone {config.model.backbone}, crop "
        f"{config.data.crop_size}, batch {config.optim.batch_size}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  seconds = {m: time_method(m, _STEP.value, _ITERATIONS.value) for m in _METHODS.value}
  reference = seconds.get("ft")
  print("| method | ms per step | images/s | relative to ft |")
  print("|---|---|---|---|")
  for method, value in seconds.items():
    ratio = f"{value / reference:.2f}" if reference else "-"
    print(f"| {method} | {1000 * value:.0f} | {config.optim.batch_size / value:.1f} | {ratio} |")


if __name__ == "__main__":
  app.run(main)

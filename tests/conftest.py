"""Shared test set-up: absl flags parsed (grain and absl-based code read them), and the
CPU convolution flag that ``python -m gsc_jax.main`` sets, so that the tests run the
programs users run (gsc_jax/platform_flags.py; a user's own XLA_FLAGS still win)."""

from absl import flags

from gsc_jax import platform_flags

flags.FLAGS.mark_as_parsed()
platform_flags.set_default_cpu_flags()

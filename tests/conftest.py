"""Shared test set-up: absl flags parsed (grain and absl-based code read them)."""

from absl import flags

flags.FLAGS.mark_as_parsed()

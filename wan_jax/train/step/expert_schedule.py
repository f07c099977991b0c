"""Which expert a training step trains: one of the two, or both in alternation.

Index convention used everywhere: 0 = "high" (high-noise expert), 1 = "low" (low-noise expert);
their names in files and metrics are the model variant's (wan_jax/variants.py). A one-model
release (the TI2V-5B) trains its model in the "high" slot, with boundary 0.
With both experts trained, steps 0 .. switch_every-1 train "high", the next switch_every train
"low", and so on. The schedule is a pure function of the global step, so a resumed run (which
restores the step from its checkpoint) continues it exactly where it stopped.
"""

from __future__ import annotations

from numbers import Integral

import jax
import jax.numpy as jnp

from wan_jax.model.flow_matching import EXPERTS, HIGH, LOW  # noqa: F401  (position = index)


def _check(train_high: bool, train_low: bool, switch_every: int) -> None:
  if not (train_high or train_low):
    raise ValueError("at least one expert must be trained: train_high and train_low are both "
                     "False")
  if isinstance(switch_every, bool) or not isinstance(switch_every, Integral) or switch_every < 1:
    raise ValueError(f"switch_every must be an integer >= 1, got {switch_every!r}")


def active_expert(step: int, train_high: bool, train_low: bool, switch_every: int) -> str:
  """The expert ("high" or "low") trained at global step `step` (0-based), in Python."""
  _check(train_high, train_low, switch_every)
  step = int(step)
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  if not (train_high and train_low):
    return HIGH if train_high else LOW
  return EXPERTS[(step // switch_every) % 2]


def active_expert_index(step: jax.Array | int, train_high: bool, train_low: bool,
                        switch_every: int) -> jax.Array:
  """Traced twin of `active_expert`: int32 0 (high) or 1 (low), for use inside a jitted step.

  `step` may be traced; the flags and switch_every are static configuration.
  """
  _check(train_high, train_low, switch_every)
  if not (train_high and train_low):
    return jnp.int32(0 if train_high else 1)
  return ((jnp.asarray(step, jnp.int32) // switch_every) % 2).astype(jnp.int32)


def batches_per_expert(steps: int, train_high: bool, train_low: bool,
                       switch_every: int) -> dict[str, int]:
  """How many of the run's `steps` batches each trained expert gets (its optimizer's horizon)."""
  _check(train_high, train_low, switch_every)
  if not (train_high and train_low):
    return {HIGH if train_high else LOW: int(steps)}
  full, rest = divmod(int(steps), 2 * switch_every)
  high = full * switch_every + min(rest, switch_every)
  return {HIGH: high, LOW: int(steps) - high}

"""Wan 2.x's flow-matching conventions, in one place for the model, the training step, the
timestep sampler and the preview sampler.

- Noise level s in [0, 1], timestep t = 1000 s (the 1000-step training grid); x_s = (1 - s) x0 +
  s eps, and the model predicts the velocity eps - x0.
- The shifted schedule s' = k s / (1 + (k - 1) s) spends more steps at high noise for k > 1
  (sampling: 12 for T2V-A14B, 5 for I2V-A14B; training may use it to draw timesteps).
- Two experts: t >= boundary * 1000 is the high-noise expert's, below it the low-noise one's
  (boundary 0.875 for T2V-A14B, 0.900 for I2V-A14B). A one-expert model (the TI2V-5B) has
  boundary 0: its one expert sits in the high-noise slot and takes every timestep.
"""

from __future__ import annotations

from typing import TypeVar

NUM_TRAIN_TIMESTEPS = 1000
HIGH, LOW = "high", "low"
EXPERTS = (HIGH, LOW)  # position = expert index (0 = high-noise)
T2V_BOUNDARY, I2V_BOUNDARY = 0.875, 0.900

A = TypeVar("A")  # a float, a NumPy or a JAX array: the formulas below serve all three


def shift(s: A, k: float | A) -> A:
  """The shifted noise level k s / (1 + (k - 1) s)."""
  return k * s / (1 + (k - 1) * s)


def unshift(s: A, k: float | A) -> A:
  """The inverse of `shift`: u with shift(u, k) = s."""
  return s / (k - (k - 1) * s)


def threshold(boundary: float) -> float:
  """The first timestep that belongs to the high-noise expert."""
  return boundary * NUM_TRAIN_TIMESTEPS


def expert_range(expert: str, boundary: float) -> tuple[float, float]:
  """(low, high) timestep bounds of an expert: high [threshold, 1000], low [0, threshold)."""
  if expert not in EXPERTS:
    raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
  if not 0.0 <= boundary < 1.0:
    raise ValueError(f"boundary must be in [0, 1), got {boundary}")
  t = threshold(boundary)
  return (t, float(NUM_TRAIN_TIMESTEPS)) if expert == HIGH else (0.0, t)

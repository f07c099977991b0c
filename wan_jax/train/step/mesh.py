"""The device mesh: ("data", "fsdp", "tensor"), the same code from 1 CPU to many hosts.

"tensor" is the innermost axis so its (per-layer, latency-bound) collectives stay on the fast
links inside one host; "fsdp" comes next, and "data" (one gradient all-reduce per step) is the
axis that crosses hosts first. The global batch splits over both "data" and "fsdp".
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")
batch_axes = ("data", "fsdp")  # the global batch's leading axis is split over both


def resolve_sizes(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces the one -1 by whatever fills `num_devices`; checks that the product matches."""
  named = ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes))
  if any(s != -1 and s < 1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1, got {named}")
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh size may be -1, got {named}")
  fixed = math.prod(s for s in sizes if s != -1)
  out = list(sizes)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {named}: {num_devices} devices are not divisible by {fixed}")
    out[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh {named} needs {fixed} devices, but there are {num_devices}")
  return tuple(out)


def _granule(device: Any) -> int:
  """The unit behind the slow network: a TPU slice, else a process (one host)."""
  slice_index = getattr(device, "slice_index", None)
  return device.process_index if slice_index is None else slice_index


def split_over_granules(sizes: Sequence[int], per_granule: int,
                        num_granules: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """(inside one host, across hosts) factors of `sizes`, filling a host innermost-axis first.

  None when the sizes cannot be factored that way (then the devices are laid out in order).
  """
  inner, room = [], per_granule
  for size in reversed(sizes):  # tensor, then fsdp, then data
    inner.append(math.gcd(size, room))
    room //= inner[-1]
  inner.reverse()
  outer = tuple(s // i for s, i in zip(sizes, inner))
  if math.prod(inner) != per_granule or math.prod(outer) != num_granules:
    return None
  return tuple(inner), outer


def device_grid(sizes: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
  """Devices arranged as `sizes`, with the inner axes kept inside one host where possible."""
  granules = collections.Counter(_granule(d) for d in devices)
  per_granule = len(devices) // len(granules)
  split = (split_over_granules(sizes, per_granule, len(granules))
           if len(granules) > 1 and set(granules.values()) == {per_granule} else None)
  if split is None:
    return mesh_utils.create_device_mesh(tuple(sizes), list(devices))
  inner, outer = split
  process_is_granule = getattr(devices[0], "slice_index", None) is None
  return mesh_utils.create_hybrid_device_mesh(inner, outer, list(devices),
                                              process_is_granule=process_is_granule)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (all of them, on every host, by default).

  Axes are Auto (compiler-propagated sharding): the model code carries no sharding annotations.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_sizes((data, fsdp, tensor), len(devices))
  return Mesh(device_grid(sizes, devices), AXES, axis_types=(AxisType.Auto,) * len(AXES))

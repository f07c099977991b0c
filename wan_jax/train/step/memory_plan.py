"""Choosing how a run fits the device before any big weights load.

A plan is a checkpointing plan (wan_jax/model/remat.py), where the idle expert waits (on the
device, or in pinned host memory, swapped in when its turn comes) and whether the trained
expert's frozen block weights are streamed (they wait in pinned host memory and the layer scan
fetches one block at a time, wan_jax/model/streaming.py). The planner compiles the train step
ahead of time for the run's largest bucket, one checkpointing plan at a time, fastest first,
and takes the first whose predicted peak fits:

  predicted peak (per device) = the compiled step's arguments + temporaries + outputs that do not
                                alias a donated argument (XLA's own memory analysis)
                              + what else stays on the device: the idle expert's weights,
                                adapters and moments, unless it waits in host memory

On one H200 this analysis matched the allocator's measured peak to 0.2 GiB at 480p and 720p, so a
small margin is enough. The step that was compiled for the chosen plan is the one that trains.

The order (fastest first) is a judgement from measured costs: saving attention outputs removes
the recomputed attention forward (~13% of the 480p step); moving the residual stream to the
host overlaps with compute (1.5 GB per block against ~1.2 s of compute at 720p); swapping a 27 GB
expert costs a pause at every expert switch, so it comes after the residual offload. Streaming
comes last: it copies every block's weights three times per step (forward, recomputation,
backward; ~80 GB at 14B in bf16), hidden behind compute at video sizes on a fast link but not
for small images, so it is what lets a small card train at all, not a free saving.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

GIB = 2**30


def size(n: float) -> str:
  """Bytes as GiB (or MiB below one GiB: the tiny configs' figures)."""
  return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


STREAMED = "block weights streamed from host memory"


@dataclasses.dataclass(frozen=True)
class Candidate:
  remat: str
  offload_expert: bool  # the idle expert (weights, adapters, moments) waits in pinned host memory
  stream: bool = False  # the trained expert's frozen block weights wait in pinned host memory

  def describe(self, two_experts: bool) -> str:
    parts = [self.remat]
    if two_experts:
      parts.append("idle expert in host memory" if self.offload_expert
                   else "both experts on the device")
    if self.stream:
      parts.append(STREAMED)
    return ", ".join(parts)


_SEARCHED = ("save_attention", "full", "save_attention+offload_residual", "offload_residual")
ORDER = (*(Candidate(r, False) for r in _SEARCHED), *(Candidate(r, True) for r in _SEARCHED),
         *(Candidate(r, True, True) for r in _SEARCHED))


def candidates(two_experts: bool, remat: str | None = None, offload_expert: bool | None = None,
               stream: bool | None = None) -> list[Candidate]:
  """The plans to try, fastest first; an explicit setting fixes its part of the plan.

  With one trained expert nothing is idle, so only the checkpointing plans and streaming differ.
  Streaming plans move the idle expert to host memory too (a resident idle expert holds more
  than the streamed one saves) unless `offload_expert=False` says otherwise.
  """
  out = []
  for c in ORDER:
    if c.stream and (not two_experts or offload_expert is False):
      c = dataclasses.replace(c, offload_expert=False)
    elif not two_experts and c.offload_expert:
      continue
    if remat is not None and c.remat != remat:
      continue
    if offload_expert is not None and two_experts and c.offload_expert != offload_expert:
      continue
    if stream is not None and c.stream != stream:
      continue
    out.append(c)
  if remat is not None and not out:  # an explicit plan outside the search order ("none", ...)
    offload = [False, True] if offload_expert is None and two_experts else [bool(offload_expert)]
    out = [Candidate(remat, o, bool(stream)) for o in offload]
  return out


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """One compiled call's device memory per device, from XLA's memory analysis."""

  peak: int  # arguments + temporaries + outputs that do not alias a donated argument
  arguments: int  # what is there before the call (weights, state, batch)
  host: int = 0  # pinned host memory the step takes: streamed weights, offloaded temporaries

  @classmethod
  def of(cls, compiled: Any, host_arguments: int = 0, host_residuals: int = 0) -> "StepMemory":
    """host_arguments: bytes of the arguments placed in pinned host memory (streamed weights).
    A backend that reports host memory apart leaves them out of its argument figure; one that
    has a single memory (the CPU) counts them, and they are taken out here, as a GPU would.
    host_residuals: the offloaded residual stream as counted from the shapes; the host figure
    takes the larger of it and the backend's host temporaries."""
    m = compiled.memory_analysis()
    arguments = m.argument_size_in_bytes
    if host_arguments and not getattr(m, "host_argument_size_in_bytes", 0):
      arguments -= host_arguments
    peak = arguments + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    host = host_arguments + max(getattr(m, "host_temp_size_in_bytes", 0), host_residuals)
    return cls(int(peak), int(arguments), int(host))


def device_bytes(tree: Any, memory_kind: str = "device") -> int:
  """Bytes of `tree` on its most loaded device (arrays or ShapeDtypeStructs with shardings) in
  one memory kind: "device" (also leaves placed without one) or "pinned_host" (each device's
  share of host memory)."""
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if (getattr(sharding, "memory_kind", None) or "device") != memory_kind:
      continue
    itemsize = np.dtype(leaf.dtype).itemsize
    if sharding is None:
      per_device[None] = per_device.get(None, 0) + math.prod(leaf.shape) * itemsize
      continue
    shard = math.prod(sharding.shard_shape(leaf.shape)) * itemsize
    for d in sharding.device_set:
      per_device[d] = per_device.get(d, 0) + shard
  return max(per_device.values(), default=0)


def device_capacity(override_gib: float = 0.0,
                    override_name: str = "train.device_memory_gib") -> tuple[int | None, str]:
  """(bytes one device may use, where that figure came from); None when the backend says not."""
  if override_gib:
    return int(override_gib * GIB), override_name
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    return None, f"{device.platform} reports no memory limit"
  return int(limit), f"{device.device_kind} allocator limit"


def host_capacity(override_gib: float = 0.0) -> tuple[int | None, str]:
  """(bytes of host RAM this process may pin, where that figure came from): the override, else
  the kernel's MemAvailable (what can be had without swapping), else None."""
  if override_gib:
    return int(override_gib * GIB), "train.host_memory_gib"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024, "available host RAM"
  except OSError:
    pass
  return None, "host RAM unknown"


def usable_host_memory(override_gib: float, margin: float) -> tuple[int | None, str]:
  """(host bytes a plan may pin, a description), `margin` kept free as for the device."""
  capacity, source = host_capacity(override_gib)
  if capacity is None:
    return None, source
  return int(capacity * (1 - margin)), f"{size(capacity)} {source}, less a {margin:.0%} margin"


def usable_memory(override_gib: float, margin: float,
                  override_name: str = "train.device_memory_gib") -> tuple[int | None, str]:
  """(bytes a plan may use per device, a description of where that came from): the capacity
  less `margin` (a fraction); None when the backend reports no limit."""
  if not 0 <= margin < 1:
    raise ValueError(f"the memory margin must be in [0, 1), got {margin}")
  capacity, source = device_capacity(override_gib, override_name)
  if capacity is None:
    return None, source
  return int(capacity * (1 - margin)), f"{size(capacity)} from {source}, less a {margin:.0%} margin"


@dataclasses.dataclass(frozen=True)
class Estimate:
  candidate: Candidate
  step: StepMemory  # the compiled step, per device
  idle: int  # the idle expert on the device (0 when it waits in host memory, or none is idle)
  idle_host: int = 0  # the idle expert in pinned host memory, per device (0 when on the device)

  @property
  def total(self) -> int:
    return self.step.peak + self.idle

  @property
  def host(self) -> int:
    """Pinned host memory per device: the idle expert, streamed weights, offloaded residuals."""
    return self.step.host + self.idle_host

  @property
  def fixed(self) -> int:
    """What does not grow with the clip: the step's arguments and the idle expert."""
    return self.step.arguments + self.idle


@dataclasses.dataclass
class Plan:
  chosen: Candidate
  estimate: Estimate | None  # None when the capacity is unknown and nothing was compared
  rejected: list[Estimate]
  usable: int | None
  capacity_source: str
  two_experts: bool
  bucket: str
  host_usable: int | None = None  # pinned host bytes this process may use (None: unchecked)
  host_source: str = ""
  local_devices: int = 1  # devices of this process (host figures are per process)

  def line(self) -> str:
    """The one line the trainer prints."""
    name = self.chosen.describe(self.two_experts)
    if self.estimate is None:
      return (f"memory plan: {name} (the fastest; {self.capacity_source}, so no fit was checked; "
              f"set train.device_memory_gib to check) for {self.bucket}")
    out = (f"memory plan: {name}: predicted peak {size(self.estimate.total)} of "
           f"{size(self.usable)} usable ({self.capacity_source}) for {self.bucket}")
    if self.host_usable is not None:
      out += (f"; host: {size(self.estimate.host * self.local_devices)} pinned of "
              f"{size(self.host_usable)} usable ({self.host_source})")
    if self.rejected:
      out += "; faster plans rejected: " + ", ".join(
          f"{e.candidate.describe(self.two_experts)} ({size(e.total)})"
          for e in self.rejected)
    return out


class DoesNotFit(ValueError):
  """No plan fits; the message says what would."""


def choose(cands: Sequence[Candidate], step_of: Callable[[str, bool], StepMemory], idle_bytes: int,
           usable: int | None, *, capacity_source: str = "", two_experts: bool = True,
           bucket: str = "", advice: Callable[[Estimate, int], str] | None = None,
           host_usable: int | None = None, host_source: str = "",
           local_devices: int = 1) -> Plan:
  """The first candidate whose predicted peak fits `usable` bytes and whose pinned host memory
  (times `local_devices`) fits `host_usable` (None: not checked).

  step_of(remat, stream) compiles and returns the step's memory per device (once per pair);
  idle_bytes is what the idle expert holds per device, on the device or in host memory.
  """
  if not cands:
    raise ValueError("no memory plan to choose from")
  if usable is None:
    return Plan(cands[0], None, [], None, capacity_source, two_experts, bucket)
  rejected, measured, host_bound = [], {}, []
  for c in cands:
    key = (c.remat, c.stream)
    if key not in measured:  # one compile per checkpointing plan, streamed or not
      measured[key] = step_of(c.remat, c.stream)
    offloaded = c.offload_expert and two_experts
    est = Estimate(c, measured[key], 0 if offloaded or not two_experts else idle_bytes,
                   idle_bytes if offloaded else 0)
    if est.total <= usable:
      if host_usable is None or est.host * local_devices <= host_usable:
        return Plan(c, est, rejected, usable, capacity_source, two_experts, bucket, host_usable,
                    host_source, local_devices)
      host_bound.append(est)
    rejected.append(est)
  if host_bound:  # the device would hold a plan; host RAM cannot
    least = min(host_bound, key=lambda e: e.host)
    raise DoesNotFit(
        f"nothing fits host memory: the plans that fit the device need pinned host memory, the "
        f"least of them ({least.candidate.describe(two_experts)}) "
        f"{size(least.host * local_devices)} for {bucket}, and {size(host_usable)} are usable "
        f"({host_source}); what would help: model.quantize=fp8 (half the weights), "
        + ("one expert per run (model.train_low_noise=False, then a run with "
           "train_high_noise=False), " if two_experts else "")
        + "fewer frames, or train.host_memory_gib if more RAM is free than reported")
  smallest = min(rejected, key=lambda e: e.total)
  msg = (f"nothing fits: the smallest plan ({smallest.candidate.describe(two_experts)}) needs "
         f"{size(smallest.total)} per device for {bucket} and {size(usable)} are usable "
         f"({capacity_source})")
  if advice is not None:
    msg += "; " + advice(smallest, usable)
  raise DoesNotFit(msg)


def frames_that_fit(frames: int, est: Estimate, usable: int, temporal: int = 4) -> int:
  """About how many frames (1 + temporal * k: the VAE's frame groups) would fit at the same
  resolution, taking the step's non-argument memory as proportional to the latent frames; 0 if
  not even one frame."""
  latent = (frames - 1) // temporal + 1
  scalable = est.total - est.fixed
  room = usable - est.fixed
  if scalable <= 0 or room <= 0:
    return 0
  fit = math.floor(latent * room / scalable)
  return 0 if fit < 1 else temporal * (min(fit, latent) - 1) + 1


def fsdp_that_fits(est: Estimate, weights: int, usable: int, limit: int = 64) -> int:
  """The smallest power-of-two mesh.fsdp (each GPU one batch row) under which the sharded
  weights plus one row's activations fit; 0 if none up to `limit`."""
  n = 2
  while n <= limit:
    if est.total - weights + weights / n <= usable:
      return n
    n *= 2
  return 0

"""The trained experts' state and where it waits: each expert's graph, trainable and frozen
weights and optimizer state, placed on the mesh by the sharding rules; with offloading, the idle
expert waits in pinned host memory and `Experts.bring` swaps it in when its steps come."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import ml_collections
import optax
from flax import nnx

from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.train.run import loading
from wan_jax.train.run.checkpointing import abstract_like
from wan_jax.train.step.expert_schedule import HIGH
from wan_jax.train.step.sharding import (
  DEVICE,
  HOST,
  shard_state,
  streamed,
  tree_shardings,
)


@dataclasses.dataclass
class ExpertState:
  graphdef: nnx.GraphDef
  trainable: nnx.State
  frozen: nnx.State
  opt_state: Any
  steps: int = 0  # batches this expert has trained on

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.trainable, self.frozen)


def place(tree: Any, mesh: jax.sharding.Mesh, min_size: int, memory_kind: str,
          stream: bool = False) -> Any:
  """The tree on the mesh as the sharding rules say, in device or (pinned) host memory; with
  `stream` (a frozen tree), its block weights in host memory wherever the rest goes."""
  shardings = jax.tree.map(lambda s: s.with_memory_kind(memory_kind),
                           tree_shardings(tree, mesh, min_size=min_size))
  if stream and memory_kind == DEVICE:
    shardings = streamed(shardings)
  return shard_state(tree, shardings)


def move(e: ExpertState, mesh: jax.sharding.Mesh, min_size: int, memory_kind: str,
         stream: bool = False) -> None:
  e.trainable, e.opt_state = (place(t, mesh, min_size, memory_kind)
                              for t in (e.trainable, e.opt_state))
  e.frozen = place(e.frozen, mesh, min_size, memory_kind, stream)


def _built_in_host_memory(enabled: bool) -> contextlib.AbstractContextManager:
  """Builds on the CPU backend when the weights are bound for host memory, or are quantised on
  load: an expert that waits there or is streamed, or a bf16 expert before it becomes fp8, may
  not fit the device even for a moment (27 GB on a 24 GB card)."""
  if not enabled or jax.default_backend() == "cpu":
    return contextlib.nullcontext()
  try:
    return jax.default_device(jax.devices("cpu")[0])
  except RuntimeError:  # JAX_PLATFORMS without cpu: build on the device as before
    return contextlib.nullcontext()


def build_expert_state(cfg: ml_collections.ConfigDict, expert: str,
                       tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, remat: str,
                       memory_kind: str = DEVICE, stream: bool = False) -> ExpertState:
  """The expert loaded (with LoRA adapters unless full fine-tuning), split into trainable and
  frozen parts, placed, with a fresh optimizer state. With `stream` the frozen block weights
  wait in pinned host memory whatever `memory_kind` says for the rest."""
  # fp8: still built on the host and placed once; since loading quantises block by block
  # (weights/fp8.py) no bf16 expert is whole anywhere, so this is no longer needed for memory.
  quantized = str(cfg.model.quantize) != "none"
  with _built_in_host_memory(stream or memory_kind == HOST or quantized):
    model = loading.load_expert(cfg, expert, remat)
    if cfg.lora.enabled:
      add_lora(model, int(cfg.lora.rank), float(cfg.lora.alpha), list(cfg.lora.targets),
               seed=cfg.seed + (0 if expert == HIGH else 1))
      graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
    else:
      graphdef, trainable, frozen = nnx.split(model, nnx.Param, ...)
    del model
  min_size = int(cfg.mesh.min_shard_size)
  frozen = place(frozen, mesh, min_size, memory_kind, stream)  # the big part, straight to its place
  trainable = place(trainable, mesh, min_size, DEVICE)
  opt_shapes = jax.eval_shape(tx.init, trainable)
  opt_state = jax.jit(tx.init, out_shardings=tree_shardings(opt_shapes, mesh, min_size=min_size))(
      trainable)
  if memory_kind != DEVICE:  # the adapters and moments follow (initialised on the device)
    trainable, opt_state = (place(t, mesh, min_size, memory_kind) for t in (trainable, opt_state))
  return ExpertState(graphdef, trainable, frozen, opt_state)


class Experts:
  """Every trained expert's state, by name ("high", "low"); with `offload`, only one is on the
  device at a time (the first from the start, the others in host memory); with `stream`, the
  frozen block weights of every expert stay in host memory (the step fetches them)."""

  def __init__(self, cfg: ml_collections.ConfigDict, names: list[str],
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, remat: str,
               offload: bool, stream: bool = False):
    self.mesh, self.min_size = mesh, int(cfg.mesh.min_shard_size)
    self.offload = offload and len(names) == 2
    self.stream = stream
    self.states = {name: build_expert_state(cfg, name, tx, mesh, remat,
                                            HOST if self.offload and i else DEVICE, stream)
                   for i, name in enumerate(names)}
    self.on_device = names[0]

  def __getitem__(self, name: str) -> ExpertState:
    return self.states[name]

  def items(self) -> Iterator[tuple[str, ExpertState]]:
    return iter(self.states.items())

  def bring(self, name: str) -> None:
    """With offloading: the named expert onto the device, the other into host memory."""
    if self.offload and name != self.on_device:
      move(self.states[self.on_device], self.mesh, self.min_size, HOST)
      move(self.states[name], self.mesh, self.min_size, DEVICE, self.stream)
      self.on_device = name

  def tree(self) -> dict[str, dict[str, Any]]:
    """What a checkpoint holds: each expert's trainable weights and optimizer state."""
    return {n: {"trainable": e.trainable, "opt": e.opt_state} for n, e in self.states.items()}

  def abstract_tree(self) -> dict[str, dict[str, Any]]:
    """`tree()`'s shapes with the shardings a restore places them with (on the device)."""
    def like(x: Any) -> Any:
      return abstract_like(x, tree_shardings(x, self.mesh, min_size=self.min_size))
    return {n: {"trainable": like(e.trainable), "opt": like(e.opt_state)}
            for n, e in self.states.items()}

  def load(self, tree: dict[str, dict[str, Any]], steps: dict[str, int]) -> None:
    """A restored `tree()` and each expert's step count; the idle one back to host memory."""
    for n, e in self.states.items():
      e.trainable, e.opt_state = tree[n]["trainable"], tree[n]["opt"]
      e.steps = int(steps[n])
      if self.offload and n != self.on_device:
        move(e, self.mesh, self.min_size, HOST)

  def steps(self) -> dict[str, int]:
    return {n: e.steps for n, e in self.states.items()}

"""Weights streamed from host memory: the layer scan brings each block's weights to the device.

With `train.stream_weights`, the frozen block weights of the trained expert wait in pinned host
memory (wan_jax/train/step/sharding.py `streamed`) and enter the compiled step there. Inside the
scanned block, `fetch` copies that block's slice to the device before any of it is used. The
block body runs under the checkpointing plan (remat.py), and the copy is part of the body, so
the recomputation and the backward pass fetch the block again instead of keeping a device copy:
at most the blocks being computed are on the device, never the stack. The backward pass needs
no saved weights: what the plan keeps are activations, and the weights are inputs it can fetch.

Which leaves to fetch is read from where they are (their memory space), not from a setting: the
same model runs resident weights unchanged, and adapters (on the device) are never copied.
XLA issues the copies asynchronously; how much of them the block's compute hides is measured,
not assumed (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import jax


def in_host_memory(x: Any) -> bool:
  """True for an array (or traced value) that lives in host memory."""
  space = getattr(jax.typeof(x), "memory_space", None)
  return space == jax.memory.Space.Host


def fetch(tree: Any) -> Any:
  """`tree` with every leaf that waits in host memory copied to the device (others as they are)."""
  return jax.tree.map(
      lambda x: jax.device_put(x, jax.memory.Space.Device) if in_host_memory(x) else x, tree)

"""Fill an abstract NNX model with host tensors keyed by per-layer names.

Checkpoints hold one tensor per layer (`blocks.7.attn.q.kernel`); the models stack their layers
(`blocks.attn.q.kernel` of shape [L, ...]) so a `lax.scan` runs them. Each stacked leaf is one
host buffer of the model's dtype, filled layer by layer as the tensors arrive (from a dict,
consumed as it is read, or from a reader that yields block by block), so host memory holds the
model being built plus the tensors in flight: never a second copy of a stacked leaf, and never a
whole checkpoint in another dtype (what lets an fp8 model load block by block).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.weights.safetensors_reader import CheckpointError

M = TypeVar("M", bound=nnx.Module)
Tensors = dict[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]


def _consumed(params: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
  """The dict's items, each removed as it is taken (its memory goes once it is placed)."""
  while params:
    name = next(iter(params))
    yield name, params.pop(name)


def _dotted(path) -> str:
  return ".".join(str(getattr(k, "key", k)) for k in path)


def assemble(make: Callable[[], M], params: Tensors, *, stacked: str | None = None,
             num_layers: int = 0) -> M:
  """make(): builds the model (run abstractly, nothing allocated); params: per-layer tensors, a
  dict (emptied) or (name, array) pairs in any order; stacked: the attribute whose leaves stack
  `num_layers` per-layer tensors. Missing, unused or mis-shaped tensors are errors, and so is a
  float tensor offered for an fp8 leaf (it needs its scales: wan_jax/weights/fp8.py)."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  pure = state.to_pure_dict()
  leaves = {_dotted(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]}
  layer_re = re.compile(rf"^{re.escape(stacked)}\.(\d+)\.(.+)$") if stacked else None
  buffers: dict[str, np.ndarray] = {}
  filled: dict[str, np.ndarray] = {}  # stacked leaf -> which layers arrived
  unused: list[str] = []
  for name, array in _consumed(params) if isinstance(params, dict) else params:
    m = layer_re.match(name) if layer_re else None
    target, layer = (f"{stacked}.{m.group(2)}", int(m.group(1))) if m else (name, None)
    leaf = leaves.get(target)
    stacked_leaf = target.startswith(f"{stacked}.") if stacked else False
    if leaf is None or (layer is None) == stacked_leaf or (stacked_leaf and layer >= num_layers):
      unused.append(name)
      continue
    want = tuple(leaf.shape[1:] if stacked_leaf else leaf.shape)
    if tuple(array.shape) != want:
      raise CheckpointError(f"{name}: checkpoint shape {tuple(array.shape)}, model needs {want}")
    if _is_fp8(leaf.dtype) and not _is_fp8(array.dtype):
      raise CheckpointError(f"{name}: {array.dtype} values for a float8_e4m3fn leaf (quantise "
                            "them with their scales first)")
    if target not in buffers:
      buffers[target] = host_buffer(leaf.shape, leaf.dtype)
      filled[target] = np.zeros(num_layers if stacked_leaf else 1, bool)
    buffers[target][layer if stacked_leaf else ...] = array
    filled[target][layer if stacked_leaf else 0] = True
    del array  # before the next one is read
  for target in leaves:
    if target not in filled or not filled[target].all():
      missing = 0 if target not in filled else int(np.argmin(filled[target]))
      rest = target[len(stacked) + 1:] if stacked and target.startswith(f"{stacked}.") else None
      raise CheckpointError(f"checkpoint lacks tensor "
                            f"{f'{stacked}.{missing}.{rest}' if rest else target!r}")
  if unused:
    raise CheckpointError(f"checkpoint has tensors the model does not use: {sorted(unused)[:20]}")
  # Into JAX arrays leaf by leaf: on the CPU backend the buffers themselves (no copy), on a
  # device one leaf in flight while the host buffers are dropped as they are sent.
  pure = jax.tree_util.tree_map_with_path(
      lambda p, _: jax.device_put(buffers.pop(_dotted(p)), may_alias=True), pure)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def host_buffer(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
  """An uninitialised array whose data starts on an `align`-byte boundary: XLA's CPU client
  takes such an array without copying it (`device_put(..., may_alias=True)`); numpy's own large
  allocations start 16 bytes into a page, and each leaf would be copied once more."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  start = -raw.ctypes.data % align
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _is_fp8(dtype) -> bool:
  return np.dtype(dtype) == np.dtype(jnp.float8_e4m3fn)


def expected_shapes(make: Callable[[], nnx.Module]) -> dict[str, tuple[int, ...]]:
  """Parameter name -> shape of a model, read off an abstract build (nothing allocated)."""
  _, state = nnx.split(nnx.eval_shape(make))
  return {".".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(state.to_pure_dict())[0]}


def check_tensors(description: str, shapes: dict[str, tuple[int, ...]],
                  expected: dict[str, tuple[int, ...]]) -> None:
  """A CheckpointError listing missing, unexpected and mis-shaped tensors, if there are any."""
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected))
  wrong = [f"{k}: {tuple(shapes[k])} (want {expected[k]})" for k in sorted(set(shapes) & set(expected))
           if tuple(shapes[k]) != tuple(expected[k])]
  problems = [f"{title} ({len(items)}): {items[:10]}" for title, items in
              (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
  if problems:
    raise CheckpointError(f"{description}: " + "; ".join(problems))

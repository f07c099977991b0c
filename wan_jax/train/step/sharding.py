"""Where every array lives on the mesh: the one place sharding decisions are made.

Rules, from a parameter's path and shape only; the only names are the layer stack and the Megatron
roles of the block linears, so LoRA factors, optimizer moments and new parameters need no entry:
  * the stacked layer axis (axis 0 of anything under `blocks`) is never sharded: the scan slices
    it, and sharding it would move whole layers between devices every step;
  * arrays with fewer than `min_size` elements per layer are replicated: gathering them costs a
    collective's latency and saves no memory worth having;
  * "tensor" (Megatron): q, k, v, ffn_in are column-parallel (output dim split), o and ffn_out
    row-parallel (input dim split), so activations stay split between the pair; a dim is split
    only when it divides evenly, else that axis is left replicated;
  * "fsdp" (ZeRO-3): the largest remaining dim that divides evenly, gathered just in time; when
    only the "tensor" dim is left it is split over both (tensor-major);
  * LoRA factors (a path part containing "lora", or a leaf named "a"/"b") follow their linear's
    rules but never split the rank dim (A [.., in, r], B [.., r, out]);
  * "data" replicates parameters; batches split their leading axis over ("data", "fsdp");
  * streamed weights (`train.stream_weights`): the frozen arrays under `blocks` keep their
    spec but live in pinned host memory; the layer scan brings each block to the device.
Optimizer state mirrors the parameter tree, so its moments get the same paths and the same specs;
scalars (step counts) come out replicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wan_jax.train.step.mesh import batch_axes

MeshLike = Mesh | AbstractMesh

DEVICE, HOST = "device", "pinned_host"  # memory kinds
MIN_SHARD_SIZE = 2**16  # elements per layer below which an array is replicated
LAYER_AXIS_PARENTS = ("blocks",)  # modules whose parameters carry a leading layer axis
COLUMN_PARALLEL = ("q", "k", "v", "ffn_in")  # output dim split over "tensor"
ROW_PARALLEL = ("o", "ffn_out")  # input dim split over "tensor"
_LORA_A = ("a", "lora_a", "down", "lora_down")  # [.., in, r]
_LORA_B = ("b", "lora_b", "up", "lora_up")  # [.., r, out]


def path_names(key_path: Sequence[Any]) -> tuple[str, ...]:
  """A jax key path as plain strings, without the trailing `.value` of an nnx Variable."""
  names = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  if names and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
    names.pop()
  return tuple(names)


def _rank_axis(path: tuple[str, ...], feature_shape: tuple[int, ...]) -> int | None:
  """The LoRA rank dim among the feature dims (never sharded), or None for other params."""
  leaf = path[-1].lower() if path else ""
  is_lora = leaf in _LORA_A + _LORA_B or any("lora" in p.lower() for p in path)
  if not is_lora or len(feature_shape) < 2:
    return None
  last = len(feature_shape) - 1
  if leaf in _LORA_A or leaf.endswith("_a"):
    return last
  if leaf in _LORA_B or leaf.endswith("_b"):
    return last - 1
  return last if feature_shape[last] < feature_shape[last - 1] else last - 1


def _tensor_axis(path: tuple[str, ...], feature_shape: tuple[int, ...]) -> int | None:
  """The feature dim that Megatron splits for this param's linear (column: out, row: in)."""
  linear = next((p for p in reversed(path[:-1]) if p in COLUMN_PARALLEL + ROW_PARALLEL), None)
  if linear is None or not feature_shape:
    return None
  if linear in COLUMN_PARALLEL:
    return len(feature_shape) - 1  # kernel [in, out], bias [out], LoRA B [r, out]
  return len(feature_shape) - 2 if len(feature_shape) >= 2 else None  # row bias: replicated


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh: MeshLike, *,
               min_size: int = MIN_SHARD_SIZE) -> P:
  """The PartitionSpec of one parameter (or optimizer leaf) from its path and shape."""
  shape = tuple(shape)
  sizes = dict(mesh.shape)
  layered = len(shape) >= 1 and any(p in LAYER_AXIS_PARENTS for p in path)
  lead = 1 if layered else 0
  features = shape[lead:]
  if int(np.prod(features, dtype=np.int64)) < min_size:
    return P(*([None] * len(shape)))
  entries: list[str | tuple[str, str] | None] = [None] * len(features)
  rank = _rank_axis(path, features)

  tensor = sizes.get("tensor", 1)
  t_axis = _tensor_axis(path, features)
  if tensor > 1 and t_axis is not None and t_axis != rank and features[t_axis] % tensor == 0:
    entries[t_axis] = "tensor"

  fsdp = sizes.get("fsdp", 1)
  if fsdp > 1:
    free = [i for i, n in enumerate(features)
            if entries[i] is None and i != rank and n % fsdp == 0]
    if free:
      entries[max(free, key=lambda i: (features[i], -i))] = "fsdp"
    elif (t_axis is not None and entries[t_axis] == "tensor"
          and features[t_axis] % (tensor * fsdp) == 0):
      entries[t_axis] = ("tensor", "fsdp")  # e.g. LoRA B [r, out]: its only large dim
  return P(*([None] * lead + entries))


def tree_shardings(tree: Any, mesh: Mesh, *, min_size: int = MIN_SHARD_SIZE) -> Any:
  """NamedSharding for every leaf of any pytree; its structure matches `tree` (device_put-able).

  Works on concrete arrays and on jax.ShapeDtypeStruct leaves (nnx.eval_shape), so a model too
  large for one device can be created directly sharded with jit(..., out_shardings=...).
  """
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: NamedSharding(
          mesh, param_spec(path_names(kp), np.shape(x), mesh, min_size=min_size)), tree)


def streamed(shardings: Any) -> Any:
  """`shardings` (of a frozen parameter tree) with the layer stack in pinned host memory: each
  device's shards wait there and the layer scan fetches one block at a time. Everything else
  (embeddings, head, their norms) stays on the device."""
  def place(kp, s):
    layered = any(p in LAYER_AXIS_PARENTS for p in path_names(kp))
    return s.with_memory_kind(HOST if layered else DEVICE)
  return jax.tree_util.tree_map_with_path(place, shardings)


def state_shardings(state: Any, mesh: Mesh, *, min_size: int = MIN_SHARD_SIZE) -> Any:
  """Shardings for an nnx.State: model params, or a whole nnx.Optimizer (moments like params)."""
  return tree_shardings(state, mesh, min_size=min_size)


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, RNG keys, small tables)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over ("data", "fsdp"); the other axes replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def shard_state(tree: Any, shardings: Any) -> Any:
  """Places `tree` as `shardings` say; each host passes the same full values.

  On several hosts, a value this process holds whole (a freshly loaded or initialised array,
  or numpy) is cut into this process's shards locally: `jax.device_put` would instead compare
  every leaf across hosts (gigabytes per 14B leaf) and, for replicated targets, fail outright.
  Arrays already spread over the hosts are resharded by `jax.device_put`.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def place(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree, shardings)


def global_batch_from_local(local_arrays: Any, mesh: Mesh) -> Any:
  """One global batch from each process's own rows (leading axis), for any number of hosts.

  Each process passes only the rows its devices hold: batch / process_count of them when the
  "data"/"fsdp" axes span the hosts. With one process this is the whole batch.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), x),
      local_arrays)

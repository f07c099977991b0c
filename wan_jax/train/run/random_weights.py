"""Random weights at real size, drawn on the device in their final dtype: what runs the trainer
and the benchmarks at full size where no checkpoint can be downloaded.

Each parameter is one jitted draw straight into its dtype and sharding; a stacked parameter
(a leading layer axis) is drawn layer by layer, so the fp32 temporaries are one layer's and a
14B expert never exists in fp32. The values follow the modules' own initialisers closely enough
to keep activations finite and of ordinary size; they are not the modules' exact draws.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from wan_jax.model.quantize import GROUP, is_fp8
from wan_jax.train.step.sharding import LAYER_AXIS_PARENTS, path_names


def init_rule(path: tuple[str, ...], shape: tuple[int, ...], stacked: bool) -> tuple[float, float]:
  """(mean, std) of a parameter's values: kernels N(0, 1/fan_in) (conv kernels over their whole
  receptive field), LoRA B zero (an adapter starts as a no-op), norm gains near 1, embeddings
  N(0, 1), modulation tables N(0, 1/dim), everything else small."""
  leaf = path[-1]
  feature = shape[1:] if stacked else shape
  if leaf == "lora_b":
    return 0.0, 0.0
  if leaf in ("kernel", "lora_a", "proj", "to_qkv"):
    fan_in = math.prod(feature[:-1]) if feature[:-1] else 1
    return 0.0, 1.0 / math.sqrt(fan_in)
  if leaf.endswith("modulation"):
    return 0.0, 1.0 / math.sqrt(feature[-1])
  if leaf in ("weight", "gamma", "scale"):
    return 1.0, 0.1
  if leaf == "embedding":
    return 0.0, 1.0
  return 0.0, 0.02


@functools.cache
def _drawer(shape: tuple[int, ...], dtype: str, mean: float, std: float, stacked: bool,
            sharding: jax.sharding.Sharding | None) -> Callable[[jax.Array], jax.Array]:
  def one(key: jax.Array, layer_shape: tuple[int, ...]) -> jax.Array:
    return (mean + std * jax.random.normal(key, layer_shape, jnp.float32)).astype(dtype)

  def draw(key: jax.Array) -> jax.Array:
    if stacked:
      return jax.lax.map(lambda k: one(k, shape[1:]), jax.random.split(key, shape[0]))
    return one(key, shape)

  return jax.jit(draw, out_shardings=sharding)


def random_state(shapes: Any, key: jax.Array, shardings: Any = None) -> Any:
  """Random values for an abstract state (ShapeDtypeStructs), one parameter at a time.

  shardings: a matching tree of shardings, or None for the default device.
  """
  flat = jax.tree_util.tree_leaves_with_path(shapes)
  treedef = jax.tree_util.tree_structure(shapes)
  placed = [None] * len(flat) if shardings is None else treedef.flatten_up_to(shardings)
  values = []
  for i, ((kp, leaf), sharding) in enumerate(zip(flat, placed)):
    path = path_names(kp)
    stacked = path[0] in LAYER_AXIS_PARENTS and len(leaf.shape) >= 3
    mean, std = init_rule(path, tuple(leaf.shape), stacked)
    if path[-1] == "kernel" and is_fp8(leaf):  # an fp8 base: values of order 1, and the scale
      mean, std = 0.0, 1.0                    # below makes them N(0, 1 / fan_in)
    elif path[-1] == "kernel_scale":  # [.., in / GROUP, out]: exact for the real sizes
      mean, std = 1.0 / math.sqrt(leaf.shape[-2] * GROUP), 0.0
    fn = _drawer(tuple(leaf.shape), str(leaf.dtype), mean, std, stacked, sharding)
    values.append(fn(jax.random.fold_in(key, i)))
  return jax.tree_util.tree_unflatten(treedef, values)


def random_module(build: Callable[[], nnx.Module], seed: int) -> nnx.Module:
  """`build()`'s module with random parameters drawn on the device; nothing is initialised on
  the host (the structure comes from nnx.eval_shape). Non-parameter state (none in our models
  today) keeps its built value."""
  abstract = nnx.eval_shape(build)
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"{type(abstract).__name__} holds non-parameter state; build it directly")
  return nnx.merge(graphdef, random_state(params, jax.random.key(seed)), rest)

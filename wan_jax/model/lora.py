"""LoRA on the transformer's per-block linears, named as users know them (original Wan names).

The blocks are one stacked module, so each target is one `Linear` whose adapter is stacked too:
A [L, in, r], B [L, r, out]. Adapter weights are `LoRAParam`s; the filters below split a model
into what LoRA training updates (`LORA`) and the frozen base (`FROZEN`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.layers import Linear, LoRAParam
from wan_jax.model.quantize import dequantize
from wan_jax.model.transformer import WanTransformer

# Original Wan name of each per-block linear -> our attribute path inside a block.
BLOCK_LINEARS: dict[str, str] = {
    **{f"{a}.{p}": f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o")},
    "ffn.0": "ffn_in",
    "ffn.2": "ffn_out",
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(BLOCK_LINEARS)

LORA = LoRAParam
FROZEN = nnx.All(nnx.Param, nnx.Not(LoRAParam))


def resolve_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
  """Names or glob patterns ("self_attn.*", "*.q") -> target names, in DEFAULT_TARGETS order."""
  patterns = (targets,) if isinstance(targets, str) else tuple(targets)
  if not patterns:
    raise ValueError("no LoRA targets given")
  chosen: set[str] = set()
  for pattern in patterns:
    hits = fnmatch.filter(DEFAULT_TARGETS, pattern)
    if not hits:
      raise ValueError(f"unknown LoRA target {pattern!r}; targets are {list(DEFAULT_TARGETS)} "
                       "(glob patterns such as 'self_attn.*' work too)")
    chosen.update(hits)
  return tuple(t for t in DEFAULT_TARGETS if t in chosen)


def block_linear(model: WanTransformer, target: str) -> Linear:
  """The stacked `Linear` behind a target name (kernel [L, in, out])."""
  module = model.blocks
  for part in BLOCK_LINEARS[target].split("."):
    module = getattr(module, part)
  return module


def add_lora(model: WanTransformer, rank: int, alpha: float,
             targets: str | Iterable[str] = DEFAULT_TARGETS, *, seed: int = 0) -> None:
  """Adds adapters in place: B = 0, so the model's output is unchanged; scale = alpha / rank.

  Each target's A is drawn from `seed` and the target's own name, so it does not depend on which
  other targets are chosen.
  """
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
  if not (isinstance(alpha, (int, float, np.number)) and math.isfinite(alpha) and alpha > 0):
    raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
  names = resolve_targets(targets)
  present = set(lora_targets(model)) & set(names)
  if present:
    raise ValueError(f"the model already has LoRA on {sorted(present)}")
  key = jax.random.key(seed)
  for name in names:
    index = DEFAULT_TARGETS.index(name)
    block_linear(model, name).add_lora(int(rank), float(alpha), jax.random.fold_in(key, index))


def lora_targets(model: WanTransformer) -> tuple[str, ...]:
  """The targets that carry an adapter, in DEFAULT_TARGETS order."""
  return tuple(t for t in DEFAULT_TARGETS if block_linear(model, t).lora_alpha is not None)


def lora_settings(model: WanTransformer) -> dict[str, tuple[int, float]]:
  """target -> (rank, alpha) for every adapted target."""
  return {t: (block_linear(model, t).lora_rank, block_linear(model, t).lora_alpha)
          for t in lora_targets(model)}


def lora_state(model: WanTransformer) -> nnx.State:
  """The trainable adapter weights only."""
  return nnx.state(model, LORA)


def split_lora(model: WanTransformer) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, adapter weights, everything else); `nnx.merge` of the three rebuilds the model."""
  return nnx.split(model, LORA, ...)


def count_lora_params(model: WanTransformer) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(lora_state(model)))


def merged_kernel(linear: Linear, layer: int | None = None) -> jax.Array:
  """kernel + A @ B * scale in fp32 (one layer of a stacked linear if `layer` is given)."""
  pick = (lambda v: v[...]) if layer is None else (lambda v: v[layer])
  kernel = pick(linear.kernel)
  if linear.kernel_scale is None:
    kernel = kernel.astype(jnp.float32)
  else:  # an fp8 base: the dequantised kernel (what the model computes with)
    kernel = dequantize(kernel, pick(linear.kernel_scale), jnp.float32)
  if linear.lora_alpha is None:
    return kernel
  delta = jnp.matmul(pick(linear.lora_a), pick(linear.lora_b), precision=jax.lax.Precision.HIGHEST)
  return kernel + delta * linear.lora_scale

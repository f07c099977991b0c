"""Checkpointing plans: what each transformer block keeps for the backward pass.

Every plan computes the same function; they trade memory for recomputation:
- "none": keep everything (small inputs only).
- "full": keep only each block's input (the fp32 residual stream); the backward pass runs the
  block's forward again, attention included.
- "save_attention": "full", plus each block's self-attention output and, with cuDNN, the softmax
  statistics its backward needs, so the backward never runs the attention forward again
  (about a third of the step at 480p x 81). Costs N x dim x 2 bytes per block.
- "offload_residual": "full", with each block's saved input in pinned host memory: it is copied
  out during the forward pass and back for the backward pass, overlapped with compute. At 720p x
  81 that is 40 x 1.55 GB off the device.
- "save_attention+offload_residual": both (the attention outputs stay on the device).
- "dots_saveable", "dots_with_no_batch_dims_saveable": JAX's matmul-saving policies (kept for
  comparison; at real size they keep far too much).

On the CPU, "pinned host" memory is the same RAM as "device" memory: the offload plans run and
compute the same numbers, but save nothing there.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.ad_checkpoint import checkpoint_name

REMAT_PLANS = ("none", "full", "save_attention", "offload_residual",
               "save_attention+offload_residual", "dots_saveable",
               "dots_with_no_batch_dims_saveable")
# The names the model gives the values a plan may keep.
BLOCK_INPUT = "block_input"
SELF_ATTENTION = "self_attention"


def is_self_attention_kernel(prim, *avals) -> bool:
  """The cuDNN fused attention forward of a self-attention (keys as long as queries).

  Its outputs are the attention output and the softmax statistics; they are the residuals of
  its custom VJP, so keeping them is what lets the backward skip the forward kernel. Cross-
  attention (512 keys) is cheap to recompute and is not kept.
  """
  if "dot_product_attention_fwd" not in prim.name or "fp8" in prim.name:
    return False
  q, k = avals[0], avals[1]
  return getattr(q, "shape", None) is not None and q.shape[1] == k.shape[1]


def block_policy(plan: str) -> Callable | None:
  """The jax.checkpoint policy of a plan (None = recompute everything)."""
  if plan not in REMAT_PLANS or plan == "none":
    raise ValueError(f"remat plan must be one of {REMAT_PLANS[1:]}, got {plan!r}")
  if plan == "full":
    return None
  if plan in ("dots_saveable", "dots_with_no_batch_dims_saveable"):
    return getattr(jax.checkpoint_policies, plan)
  save_attention = "save_attention" in plan
  named = jax.checkpoint_policies.save_and_offload_only_these_names(
      names_which_can_be_saved=[SELF_ATTENTION] if save_attention else [],
      names_which_can_be_offloaded=[BLOCK_INPUT] if "offload_residual" in plan else [],
      offload_src="device", offload_dst="pinned_host")

  def policy(prim, *avals, **params):
    if save_attention and is_self_attention_kernel(prim, *avals):
      return True  # saved on the device
    return named(prim, *avals, **params)

  return policy


def remat_block(fn: Callable, plan: str) -> Callable:
  """`fn` (one scanned block) under the plan's checkpoint policy."""
  if plan == "none":
    return fn
  return jax.checkpoint(fn, policy=block_policy(plan), prevent_cse=False)


def name_block_input(x: jax.Array) -> jax.Array:
  """Marks the residual stream entering a block (what the offload plans move to the host)."""
  return checkpoint_name(x, BLOCK_INPUT)


def name_self_attention(out: jax.Array) -> jax.Array:
  """Marks a self-attention output computed without cuDNN (cuDNN's is kept by its kernel)."""
  return checkpoint_name(out, SELF_ATTENTION)

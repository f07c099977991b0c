"""Fill an abstract NNX model with host tensors keyed by per-layer names.

Checkpoints hold one tensor per layer (`blocks.7.attn.q.kernel`); the models stack their layers
(`blocks.attn.q.kernel` of shape [L, ...]) so a `lax.scan` runs them. Tensors are consumed from
the dict as they are placed, so host memory is freed while the model fills.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.weights.safetensors_reader import CheckpointError

M = TypeVar("M", bound=nnx.Module)


def assemble(make: Callable[[], M], params: dict[str, np.ndarray], *, stacked: str | None = None,
             num_layers: int = 0) -> M:
  """make(): builds the model (run abstractly, nothing allocated); stacked: the attribute whose
  leaves stack `num_layers` per-layer tensors. Missing, unused or mis-shaped tensors are errors."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  pure = state.to_pure_dict()

  def fill(path, leaf):
    name = ".".join(str(getattr(k, "key", k)) for k in path)
    if stacked and name.startswith(stacked + "."):
      rest = name[len(stacked) + 1:]
      array = np.stack([params.pop(f"{stacked}.{i}.{rest}") for i in range(num_layers)])
    else:
      array = params.pop(name)
    if array.shape != leaf.shape:
      raise CheckpointError(f"{name}: checkpoint shape {array.shape}, model needs {leaf.shape}")
    return jnp.asarray(array, dtype=leaf.dtype)

  try:
    pure = jax.tree_util.tree_map_with_path(fill, pure)
  except KeyError as e:
    raise CheckpointError(f"checkpoint lacks tensor {e}") from None
  if params:
    raise CheckpointError(f"checkpoint has tensors the model does not use: {sorted(params)[:20]}")
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


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

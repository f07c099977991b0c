"""An fp8 base on the host, tensor by tensor: which per-layer kernels the quantised model stores
in fp8, quantising them as a checkpoint is read (never the whole expert in bf16 first), and
keeping a ComfyUI fp8 file's own values where its scales fit ours.

The values equal `wan_jax.model.quantize.quantize` on the device (`quantize_numpy` is its host
twin), so a model quantised here is bit for bit the one `load.quantize_model` makes of the whole
unquantised model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from wan_jax.model.config import WanConfig
from wan_jax.model.quantize import group_size, is_fp8, quantize_numpy
from wan_jax.model.transformer import WanTransformer

SCALE_SUFFIX = "_scale"  # `kernel` -> `kernel_scale`, as model/layers.py names the leaf


def scale_name(kernel: str) -> str:
  return kernel + SCALE_SUFFIX


def fp8_kernels(cfg: WanConfig) -> frozenset[str]:
  """Per-layer names (`blocks.7.ffn_in.kernel`) of the kernels the quantised model stores in
  fp8, read off an abstract build (nothing allocated), so they follow model/ by construction."""
  abstract = nnx.eval_shape(lambda: WanTransformer(cfg.replace(quantize="fp8"),
                                                   rngs=nnx.Rngs(0)))
  names = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(abstract).to_pure_dict())[0]:
    if is_fp8(leaf):
      parts = [str(getattr(k, "key", k)) for k in path]
      if parts[0] != "blocks":  # every fp8 kernel is a block's: stacked over layers
        raise AssertionError(f"unexpected fp8 leaf outside the blocks: {parts}")
      names.update(".".join(["blocks", str(i), *parts[1:]]) for i in range(cfg.num_layers))
  return frozenset(names)


def quantize_tensors(tensors: Iterable[tuple[str, np.ndarray]], names: frozenset[str]
                     ) -> Iterator[tuple[str, np.ndarray]]:
  """The tensors as read, those in `names` replaced by their fp8 values and scales, one at a
  time (fp32 temporaries of one kernel)."""
  for name, array in tensors:
    if name in names:
      q, scale = quantize_numpy(array)
      del array
      yield name, q
      yield scale_name(name), scale
    else:
      yield name, array


def stored_scales(values: np.ndarray, scale: np.ndarray | None) -> np.ndarray | str:
  """Our scales [in / group, out] for a file's own fp8 kernel, or why there are none.

  values: the file's weight in torch layout [out, in]; scale: its `scale_weight` (None: plain
  fp8, scale 1). A per-tensor scale or one per output channel ([out] or [out, 1]) is ours
  broadcast over the groups, so the file's fp8 values are kept exactly (dequantising gives the
  same numbers as the file's `weight * scale_weight`). Anything else: a reason string, and the
  caller quantises the dequantised weight again.
  """
  if values.dtype != np.dtype(ml_dtypes.float8_e4m3fn):
    return f"stored as {values.dtype}"
  fan_out, fan_in = values.shape
  groups = fan_in // group_size(fan_in)
  s = np.ones((), np.float32) if scale is None else np.asarray(scale, np.float32)
  if s.size == 1:
    per_column = np.full((fan_out,), s.reshape(()), np.float32)
  elif s.shape in ((fan_out,), (fan_out, 1)):
    per_column = s.reshape(fan_out)
  else:
    return f"scale_weight of shape {tuple(s.shape)}"
  if not np.all(np.isfinite(per_column) & (per_column > 0)):
    return "scale_weight not finite and positive"
  return np.broadcast_to(per_column, (groups, fan_out)).copy()

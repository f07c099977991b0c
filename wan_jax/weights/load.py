"""`load_transformer` / `load_dual_transformer`: a ready model from a converted JAX checkpoint or
straight from a PyTorch checkpoint (converted on the fly, nothing written)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.config import WanConfig
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.transformer import WanTransformer
from wan_jax.weights import checkpoint
from wan_jax.weights.convert import dtype_name, numpy_dtype
from wan_jax.weights.safetensors_reader import CheckpointError
from wan_jax.weights.sources import find_experts

log = logging.getLogger(__name__)


def assemble(cfg: WanConfig, params: dict[str, np.ndarray]) -> WanTransformer:
  """Builds the model around per-layer tensors (consumed from `params` to free host memory)."""
  abstract = nnx.eval_shape(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = state.to_pure_dict()

  def fill(path, leaf):
    name = ".".join(str(getattr(k, "key", k)) for k in path)
    if name.startswith("blocks."):
      rest = name[len("blocks."):]
      array = np.stack([params.pop(f"blocks.{i}.{rest}") for i in range(cfg.num_layers)])
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


def _pick(names: list[str], expert: str | None, where: str) -> str:
  if expert is None:
    if len(names) == 1:
      return names[0]
    raise ValueError(f"{where} holds experts {names}; pass expert= one of them "
                     "(or use load_dual_transformer)")
  if expert not in names:
    raise ValueError(f"{where} has no expert {expert!r}; it holds {names}")
  return expert


def _load_params(path: Path, expert: str | None, dtype: str, num_heads: int | None
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(arch dict, per-layer tensors in `dtype`) for one expert of a converted or PyTorch path."""
  np_dtype = numpy_dtype(dtype)
  manifest = checkpoint.read_manifest(path) if path.is_dir() else None
  if manifest is not None:
    name = _pick(list(manifest["experts"]), expert, str(path))
    entry = manifest["experts"][name]
    if manifest["dtype"] != dtype and np_dtype.itemsize > numpy_dtype(manifest["dtype"]).itemsize:
      log.warning("%s was converted in %s; loading as %s cannot restore the lost precision",
                  path, manifest["dtype"], dtype)
    params = checkpoint.read_expert(path / entry["path"])
    return entry["config"], {k: v.astype(np_dtype, copy=False) for k, v in params.items()}
  _, experts = find_experts(path, num_heads=num_heads)
  name = _pick(list(experts), expert, str(path))
  source = experts[name]
  log.info("converting %s on the fly (%s)", source.description, dtype)
  return source.config.arch_dict(), dict(source.converted(np_dtype))


def load_transformer(path: str | Path, dtype: str = "bfloat16", *, expert: str | None = None,
                     num_heads: int | None = None, **runtime: Any) -> WanTransformer:
  """One Wan expert, ready to call.

  path: a folder made by `convert/wan22.py`, or any PyTorch checkpoint layout it accepts.
  dtype: the parameter dtype ("bfloat16", "float32", "float16"); also the compute dtype unless
    `compute_dtype` says otherwise, so "float32" gives full-precision results.
  expert: "high_noise" / "low_noise" when the path holds both.
  runtime: WanConfig runtime fields (compute_dtype, attention, attention_chunk_size, remat).
  """
  dtype = dtype_name(dtype)
  arch, params = _load_params(Path(path).expanduser().resolve(), expert, dtype, num_heads)
  runtime.setdefault("compute_dtype", dtype)
  cfg = WanConfig.from_arch_dict(arch, param_dtype=dtype, **runtime)
  return assemble(cfg, params)


def load_dual_transformer(path: str | Path, dtype: str = "bfloat16", *, boundary: float = 0.875,
                          num_heads: int | None = None, **runtime: Any) -> DualWanTransformer:
  """Both A14B experts (official, diffusers or converted layout) behind the timestep switch."""
  dtype = dtype_name(dtype)
  high = load_transformer(path, dtype, expert="high_noise", num_heads=num_heads, **runtime)
  low = load_transformer(path, dtype, expert="low_noise", num_heads=num_heads, **runtime)
  return DualWanTransformer(high, low, boundary=boundary)

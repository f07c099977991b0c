"""`load_vae`, `load_text_encoder`, `load_tokenizer`: from a converted folder or straight from
the PyTorch release (converted on the fly, nothing written)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from wan_jax.model.umt5 import UMT5Config, UMT5Encoder
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import VAEConfig
from wan_jax.weights import checkpoint, umt5_keys
from wan_jax.weights.assemble import assemble
from wan_jax.weights.components import find_components
from wan_jax.weights.convert import (
  dtype_name,
  numpy_dtype,
  text_encoder_source,
  vae_source,
)
from wan_jax.weights.safetensors_reader import CheckpointError

log = logging.getLogger(__name__)


def _from_converted(path: Path, manifest: dict, name: str,
                    dtype: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(arch, tensors in `dtype`) of one component of a converted folder."""
  entry = _entry(path, manifest, name)
  if numpy_dtype(dtype).itemsize > numpy_dtype(entry["dtype"]).itemsize:
    log.warning("%s: %s was converted in %s; loading as %s cannot restore the lost precision",
                path, name, entry["dtype"], dtype)
  params = checkpoint.read_expert(path / entry["path"])
  for key in list(params):  # one tensor at a time: never two copies of the model on the host
    params[key] = params.pop(key).astype(numpy_dtype(dtype), copy=False)
  return entry["config"], params


def _entry(path: Path, manifest: dict, name: str) -> dict:
  entry = manifest.get(name)
  if not isinstance(entry, dict):
    held = [k for k, v in manifest.items() if isinstance(v, dict)] or ["nothing"]
    raise CheckpointError(f"{path} holds no {name} (it holds {', '.join(held)}); convert it "
                          f"with: python convert/wan22.py <release folder> {path} --only {name}")
  return entry


def component_location(path: str | Path, name: str) -> Path:
  """The file or folder that holds one component (vae, text_encoder, tokenizer) of `path`:
  what identifies it, e.g. for cache keys (a release's other files do not change it)."""
  path = Path(path).expanduser().resolve()
  manifest = checkpoint.read_manifest(path) if path.is_dir() else None
  if manifest is not None:
    return path / _entry(path, manifest, name)["path"]
  where = getattr(find_components(path), name)
  if where is None:
    raise CheckpointError(f"{path}: no {name} found there")
  return where


def _component(path: str | Path, name: str, dtype: str, source) -> tuple[Any, dict, Path]:
  """(config or arch dict, tensors, resolved path) from a converted folder or PyTorch files."""
  path = Path(path).expanduser().resolve()
  manifest = checkpoint.read_manifest(path) if path.is_dir() else None
  if manifest is not None:
    arch, params = _from_converted(path, manifest, name, dtype)
    return arch, params, path
  where = getattr(find_components(path), name)
  if where is None:
    raise CheckpointError(f"{path}: no {name} found there")
  store, cfg, params = source(where, dtype)
  log.info("converting %s on the fly (%s)", store.description, dtype)
  return cfg, dict(params), path


def load_vae(path: str | Path, dtype: str = "float32", **runtime: Any) -> WanVAE:
  """The Wan 2.1 or Wan 2.2 VAE, told apart by its tensors. path: a converted folder, a release
  folder, `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth`, or a diffusers `vae/` folder. dtype float32 (the
  reference) or bfloat16 (half the memory).
  runtime: VAEConfig runtime fields (compute_dtype, attention_chunk_size)."""
  dtype = dtype_name(dtype)
  cfg, params, _ = _component(path, "vae", dtype, vae_source)
  arch = cfg if isinstance(cfg, dict) else cfg.arch_dict()
  cfg = VAEConfig.from_arch_dict(arch, **{"param_dtype": dtype, "compute_dtype": dtype, **runtime})
  return assemble(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), params)


def load_text_encoder(path: str | Path, dtype: str = "bfloat16", **runtime: Any) -> UMT5Encoder:
  """The umT5-XXL encoder. path: a converted folder, a release folder,
  `models_t5_umt5-xxl-enc-bf16.pth`, or a diffusers/HF `text_encoder/` folder."""
  dtype = dtype_name(dtype)
  cfg, params, _ = _component(path, "text_encoder", dtype, text_encoder_source)
  if isinstance(cfg, dict):
    cfg = UMT5Config(**cfg)
  cfg = cfg.replace(**{"param_dtype": dtype, "compute_dtype": dtype, **runtime})
  return umt5_keys.build_encoder(cfg, params)


def load_tokenizer(path: str | Path):
  """The umT5 tokenizer (the `transformers` class its files name) from a converted folder, a
  release folder (`google/umt5-xxl/` or `tokenizer/`) or the tokenizer folder itself."""
  from transformers import AutoTokenizer
  path = Path(path).expanduser().resolve()
  manifest = checkpoint.read_manifest(path) if path.is_dir() else None
  if manifest is not None:  # a converted folder: only what its manifest lists counts
    folder = path / _entry(path, manifest, "tokenizer")["path"]
  else:
    folder = find_components(path).tokenizer
    if folder is None:
      raise CheckpointError(f"{path}: no tokenizer found (expected google/umt5-xxl/ or "
                            "tokenizer/ with tokenizer.json or spiece.model)")
  return AutoTokenizer.from_pretrained(str(folder))

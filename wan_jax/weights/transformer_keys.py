"""Key maps between Wan transformer checkpoints and our parameter tree.

Every tensor is named three ways: the original Wan key (`blocks.3.self_attn.q.weight`), the
diffusers key (`blocks.3.attn1.to_q.weight`) and ours (`blocks.3.self_attn.q.kernel`, later
stacked over layers). ComfyUI single files use the original keys behind `model.diffusion_model.`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import numpy as np

from wan_jax.model.config import WanConfig
from wan_jax.weights.layouts import Layout
from wan_jax.weights.safetensors_reader import CheckpointError

PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# (original module, ours, kind) for the parts outside the blocks; kind picks the transform.
_TOP = [
    ("patch_embedding", "patch_embedding", "conv"),
    ("text_embedding.0", "text_embedding_1", "linear"),
    ("text_embedding.2", "text_embedding_2", "linear"),
    ("time_embedding.0", "time_embedding_1", "linear"),
    ("time_embedding.2", "time_embedding_2", "linear"),
    ("time_projection.1", "time_projection", "linear"),
    ("head.head", "head", "linear"),
]
_BLOCK = [(f"{a}.{p}", f"{a}.{p}", "linear") for a in ("self_attn", "cross_attn")
          for p in ("q", "k", "v", "o")] + [
    ("ffn.0", "ffn_in", "linear"),
    ("ffn.2", "ffn_out", "linear"),
]
_BLOCK_NORMS = [f"{a}.norm_{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k")]

# original -> diffusers renames, applied to the module part of a key.
_TO_DIFFUSERS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
    (r"^(blocks\.\d+)\.self_attn\.", r"\1.attn1."),
    (r"^(blocks\.\d+)\.cross_attn\.", r"\1.attn2."),
    (r"^(blocks\.\d+\.attn[12])\.([qkv])\.", r"\1.to_\2."),
    (r"^(blocks\.\d+\.attn[12])\.o\.", r"\1.to_out.0."),
    (r"^(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.ffn\.0\.", r"\1.ffn.net.0.proj."),
    (r"^(blocks\.\d+)\.ffn\.2\.", r"\1.ffn.net.2."),
]


def to_diffusers_key(original: str) -> str:
  for pattern, repl in _TO_DIFFUSERS:
    original = re.sub(pattern, repl, original)
  return original


def transform_for(kind: str) -> Callable[[np.ndarray], np.ndarray]:
  """How a source tensor becomes ours: transpose a linear, flatten a patch conv, or keep."""
  if kind == "linear":
    return lambda w: np.ascontiguousarray(w.T)
  if kind == "conv":  # [O, I, kt, kh, kw] -> [(kt, kh, kw, I), O], our patch flatten order.
    return lambda w: np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0).reshape(-1, w.shape[0]))
  return lambda w: w


LAYER_RE = re.compile(r"blocks\.(\d+)\.")  # the layer number in any of the three namings


def parameter_map(num_layers: int) -> dict[str, tuple[str, str]]:
  """Our per-layer parameter name -> (original key, transform kind) for the whole model."""
  out: dict[str, tuple[str, str]] = {}
  for orig, ours, kind in _TOP:
    out[f"{ours}.kernel"] = (f"{orig}.weight", kind)
    out[f"{ours}.bias"] = (f"{orig}.bias", "none")
  out["head_modulation"] = ("head.modulation", "none")
  for i in range(num_layers):
    for orig, ours, kind in _BLOCK:
      out[f"blocks.{i}.{ours}.kernel"] = (f"blocks.{i}.{orig}.weight", kind)
      out[f"blocks.{i}.{ours}.bias"] = (f"blocks.{i}.{orig}.bias", "none")
    for norm in _BLOCK_NORMS:
      out[f"blocks.{i}.{norm}.weight"] = (f"blocks.{i}.{norm}.weight", "none")
    out[f"blocks.{i}.norm3.weight"] = (f"blocks.{i}.norm3.weight", "none")
    out[f"blocks.{i}.norm3.bias"] = (f"blocks.{i}.norm3.bias", "none")
    out[f"blocks.{i}.modulation"] = (f"blocks.{i}.modulation", "none")
  return out


def layout_of(keys: Iterable[str]) -> Layout | None:
  """The transformer's layout (original or diffusers naming, ComfyUI prefix), or None."""
  keys = list(keys)
  prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in keys)), "")
  stripped = {k[len(prefix):] for k in keys if k.startswith(prefix)}
  if "patch_embedding.weight" in stripped and "head.head.weight" in stripped:
    return Layout("transformer", "original", prefix)
  if "patch_embedding.weight" in stripped and "proj_out.weight" in stripped:
    return Layout("transformer", "diffusers", prefix)
  return None


def detect_key_layout(keys: list[str]) -> tuple[str, str]:
  """(prefix, "original" | "diffusers") from the key names; an error for anything else."""
  layout = layout_of(keys)
  if layout is not None:
    return layout.prefix, layout.naming
  sample = sorted(keys)[:8]
  raise CheckpointError("unknown transformer key layout: expected Wan original keys "
                        "(patch_embedding.weight, head.head.weight), diffusers keys "
                        f"(proj_out.weight) or a ComfyUI file (model.diffusion_model.*); "
                        f"first keys: {sample}")


def infer_config(shape_of: Callable[[str], tuple[int, ...]], keys: list[str],
                 num_heads: int | None = None, **extra) -> WanConfig:
  """Architecture from tensor shapes (original key names); heads default to head_dim 128.

  Every released Wan transformer uses head_dim 128, which shapes alone cannot tell; pass
  num_heads (or keep the checkpoint's config.json beside it) for anything else.
  """
  dim, in_ch, *patch = shape_of("patch_embedding.weight")
  layers = {int(m.group(1)) for k in keys if (m := LAYER_RE.match(k))}
  if not layers or sorted(layers) != list(range(len(layers))):
    raise CheckpointError(f"transformer blocks are not numbered 0..N-1: {sorted(layers)[:50]}")
  patch_volume = int(np.prod(patch))
  return WanConfig(
      dim=dim, in_channels=in_ch, patch_size=tuple(patch),
      ffn_dim=shape_of("blocks.0.ffn.0.weight")[0],
      freq_dim=shape_of("time_embedding.0.weight")[1],
      text_dim=shape_of("text_embedding.0.weight")[1],
      out_channels=shape_of("head.head.weight")[0] // patch_volume,
      num_layers=len(layers), num_heads=num_heads or max(dim // 128, 1), **extra)


def check_keys(cfg: WanConfig, present: set[str]) -> None:
  """Missing or unexpected tensors are one error that lists them (original key names)."""
  wanted = {orig for orig, _ in parameter_map(cfg.num_layers).values()}
  missing, unexpected = sorted(wanted - present), sorted(present - wanted)
  if missing or unexpected:
    lines = ["transformer checkpoint does not match the Wan architecture:"]
    if missing:
      lines.append(f"  missing ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
      lines.append(f"  unexpected ({len(unexpected)}): {unexpected[:20]}"
                   f"{' ...' if len(unexpected) > 20 else ''}")
    if any(any(m in k for m in _IMAGE_ENCODER_MARKS) for k in unexpected):
      lines.append("  (a CLIP image branch: a Wan 2.1 I2V/FLF2V expert; wan-jax supports Wan 2.2 "
                   "I2V-A14B, which has none)")
    raise CheckpointError("\n".join(lines))


# Tensor names of the CLIP image branch of Wan 2.1's I2V/FLF2V experts (original, diffusers).
_IMAGE_ENCODER_MARKS = ("img_emb.", "k_img.", "v_img.", "image_embedder.", "add_k_proj.",
                        "add_v_proj.")


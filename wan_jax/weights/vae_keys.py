"""VAE key maps: original Wan (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`) -> diffusers
(`AutoencoderKLWan`) -> ours.

Our parameter tree follows diffusers' names, so the last step only renames `weight` to `kernel`
and moves PyTorch's channels-first layouts to JAX's channels-last ones. The 2.1 original layout
numbers its layers in flat `nn.Sequential`s; mapping them needs the number of residual blocks per
level, which is read from the keys themselves. The 2.2 original layout nests one `Sequential` per
level (`encoder.downsamples.i.downsamples.j`, `decoder.upsamples.i.upsamples.j`), its last entry
the resampler when the level has one; diffusers names those `downsampler` / `upsampler`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import numpy as np

from wan_jax.model.vae_config import (
  LATENTS_MEAN,
  LATENTS_MEAN_22,
  LATENTS_STD,
  LATENTS_STD_22,
  VAEConfig,
)
from wan_jax.weights.layouts import Layout
from wan_jax.weights.safetensors_reader import CheckpointError

_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma":
             "norm2.gamma", "residual.6": "conv2", "shortcut": "conv_shortcut"}
_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
_HEAD = {"head.0.gamma": "norm_out.gamma", "head.2": "conv_out"}
_NESTED = re.compile(r"(encoder\.down|decoder\.up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.+)")


def layout_of(keys: Iterable[str]) -> Layout | None:
  """The VAE's layout: "original" (Wan's own .pth) or "diffusers" naming, or None."""
  keys = set(keys)
  if "encoder.conv1.weight" in keys and "conv1.weight" in keys:
    return Layout("vae", "original")
  if "encoder.conv_in.weight" in keys and "quant_conv.weight" in keys:
    return Layout("vae", "diffusers")
  return None


def detect_layout(keys: Iterable[str]) -> str:
  """"original" (Wan's own .pth) or "diffusers"; anything else is an error."""
  keys = set(keys)
  layout = layout_of(keys)
  if layout is not None:
    return layout.naming
  raise CheckpointError("not a Wan VAE checkpoint: expected encoder.conv1.weight (Wan) or "
                        f"encoder.conv_in.weight (diffusers); first keys: {sorted(keys)[:8]}")


def _rename_residual(rest: str) -> str:
  for old, new in _RESIDUAL.items():
    if rest == old or rest.startswith(old + "."):
      return new + rest[len(old):]
  return rest  # resample.1.*, time_conv.* keep their names


def _first_resample_index(keys: set[str], prefix: str) -> int:
  found = [int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.resample\.", k))]
  if not found:
    raise CheckpointError(f"no resampling layers under {prefix}: not a Wan 2.1 VAE")
  return min(found)


def _is_residual_original(keys: set[str]) -> bool:
  return any(_NESTED.match(k) for k in keys)


def _nested_to_diffusers(m: re.Match) -> str:
  """One key of a 2.2 level: resnets.j, or the level's resampler."""
  side, level, j, rest = m.groups()
  if rest.startswith(("resample.", "time_conv.")):
    return f"{side}_blocks.{level}.{side.split('.')[1]}sampler.{rest}"
  return f"{side}_blocks.{level}.resnets.{j}.{_rename_residual(rest)}"


def original_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
  """{original key: diffusers key} for every key of a Wan 2.1 or Wan 2.2 VAE state dict."""
  keys = set(keys)
  residual = _is_residual_original(keys)
  blocks_per_level = 0 if residual else _first_resample_index(keys, "decoder.upsamples")
  out = {}
  for key in keys:
    new = None
    if key.startswith("conv1."):
      new = "quant_conv." + key[len("conv1."):]
    elif key.startswith("conv2."):
      new = "post_quant_conv." + key[len("conv2."):]
    elif m := re.match(r"(encoder|decoder)\.conv1\.(.+)", key):
      new = f"{m.group(1)}.conv_in.{m.group(2)}"
    elif m := re.match(r"(encoder|decoder)\.middle\.(\d)\.(.+)", key):
      rest = m.group(3) if m.group(2) == "1" else _rename_residual(m.group(3))
      new = f"{m.group(1)}.{_MIDDLE[m.group(2)]}.{rest}"
    elif m := re.match(r"(encoder|decoder)\.(head\.\d(?:\.gamma)?)(.*)", key):
      if m.group(2) in _HEAD:
        new = f"{m.group(1)}.{_HEAD[m.group(2)]}{m.group(3)}"
    elif residual:  # 2.2: everything else lies in a level's nested Sequential
      new = _nested_to_diffusers(m) if (m := _NESTED.match(key)) else None
    elif m := re.match(r"encoder\.downsamples\.(\d+)\.(.+)", key):
      new = f"encoder.down_blocks.{m.group(1)}.{_rename_residual(m.group(2))}"
    elif m := re.match(r"decoder\.upsamples\.(\d+)\.(.+)", key):
      level, j = divmod(int(m.group(1)), blocks_per_level + 1)
      part = (f"upsamplers.0.{m.group(2)}" if j == blocks_per_level
              else f"resnets.{j}.{_rename_residual(m.group(2))}")
      new = f"decoder.up_blocks.{level}.{part}"
    if new is None:
      raise CheckpointError(f"unexpected key in a Wan VAE checkpoint: {key!r}")
    out[key] = new
  return out


def diffusers_to_ours(key: str, array: np.ndarray) -> tuple[str, np.ndarray]:
  """One diffusers tensor in our name and layout (kernels channels-last, [in, out])."""
  base, _, leaf = key.rpartition(".")
  if leaf == "gamma":
    return key, array.reshape(-1)
  if base.endswith(("to_qkv", "proj")):  # 1x1 Conv2d [out, in, 1, 1] -> matmul [in, out]
    return (f"{base}_bias", array) if leaf == "bias" else (base, array.reshape(array.shape[:2]).T)
  if base.endswith(".resample.1"):
    base = base[: -len(".1")]
  if leaf == "bias":
    return f"{base}.bias", array
  if leaf != "weight" or array.ndim not in (4, 5):
    raise CheckpointError(f"unexpected VAE tensor {key!r} of shape {array.shape}")
  perm = (2, 3, 1, 0) if array.ndim == 4 else (2, 3, 4, 1, 0)
  return f"{base}.kernel", np.ascontiguousarray(array.transpose(perm))


def infer_config(shapes: dict[str, tuple[int, ...]], extra: dict | None = None,
                 **runtime) -> VAEConfig:
  """The architecture (Wan 2.1 or 2.2) from diffusers-layout tensor shapes, with config.json's
  statistics when there is one (else the published ones of the VAE the shapes show)."""
  extra = extra or {}
  try:
    return _infer_config(shapes, extra, **runtime)
  except (KeyError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"not a complete Wan VAE: {type(e).__name__}: {e}") from None


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
  """How many numbered children `prefix.N.` the keys show (0 when none)."""
  found = [int(m.group(1)) for k in shapes if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))]
  return 1 + max(found) if found else 0


def _infer_config(shapes: dict[str, tuple[int, ...]], extra: dict, **runtime) -> VAEConfig:
  base, pixel_channels = shapes["encoder.conv_in.weight"][:2]
  patch = math.isqrt(pixel_channels // 3)
  if 3 * patch * patch != pixel_channels:
    raise CheckpointError(f"encoder.conv_in takes {pixel_channels} channels: not 3 x patch^2")
  z_dim = shapes["post_quant_conv.weight"][0]
  levels = _count(shapes, "decoder.up_blocks")
  num_res = _count(shapes, "decoder.up_blocks.0.resnets") - 1
  if levels == 0 or num_res < 0:
    raise CheckpointError("no decoder.up_blocks.N.resnets.M tensors: not a complete Wan VAE")
  residual = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in shapes)
  if "is_residual" in extra and bool(extra["is_residual"]) != residual:
    raise CheckpointError(f"config.json says is_residual={extra['is_residual']} but the tensors "
                          f"show {'residual' if residual else 'plain'} down blocks")
  if residual:  # 2.2: one block per level, each with resnets.j and (but the last) a downsampler
    mult = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // base
            for i in range(levels)]
    temporal = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes
                for i in range(levels - 1)]
    decoder_base = shapes["decoder.conv_out.weight"][1] // mult[0]
    stats = (LATENTS_MEAN_22, LATENTS_STD_22)
  else:
    mult = [shapes[f"decoder.up_blocks.{levels - 1 - i}.resnets.0.conv1.weight"][0] // base
            for i in range(levels)]
    down = sorted(int(m.group(1)) for k in shapes
                  if (m := re.match(r"encoder\.down_blocks\.(\d+)\.resample\.1\.weight", k)))
    temporal = [f"encoder.down_blocks.{i}.time_conv.weight" in shapes for i in down]
    decoder_base = base
    stats = (LATENTS_MEAN, LATENTS_STD)
  return VAEConfig(base_dim=base, z_dim=z_dim, dim_mult=tuple(mult), num_res_blocks=num_res,
                   temporal_downsample=tuple(temporal),
                   latents_mean=tuple(extra.get("latents_mean") or stats[0]),
                   latents_std=tuple(extra.get("latents_std") or stats[1]),
                   decoder_base_dim=None if decoder_base == base else decoder_base,
                   is_residual=residual, patch_size=patch, **runtime)


def diffusers_names(store) -> dict[str, str]:
  """{key in the file: diffusers name} for a VAE store in either layout."""
  keys = store.keys()
  if detect_layout(keys) == "original":
    return original_to_diffusers(keys)
  return {k: k for k in keys}


def diffusers_shapes(store, names: dict[str, str]) -> dict[str, tuple[int, ...]]:
  return {names[k]: tuple(store.shape(k)) for k in names}


def converted(store, names: dict[str, str], dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(our name, array in `dtype`) for every tensor of a VAE checkpoint."""
  for key in sorted(names):
    name, array = diffusers_to_ours(names[key], store.read(key))
    yield name, array.astype(dtype, copy=False)

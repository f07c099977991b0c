"""Reference checkpoints for the tests: a tiny diffusers WanTransformer3DModel with random
weights, written in every layout users have (diffusers, official, ComfyUI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from wan_jax.weights.transformer_keys import to_diffusers_key

# Tiny, but every size differs so a transposed or misplaced tensor cannot go unnoticed.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16,
            out_channels=16, text_dim=48, freq_dim=32, ffn_dim=96, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
TEXT_LEN = 512  # Wan pads the prompt to 512 rows; padded rows are attended to.


I2V_IN_CHANNELS = 36  # Wan 2.2 I2V: 16 noisy latents, 4 mask channels, 16 condition latents


def make_reference(seed: int, in_channels: int = 16,
                   out_channels: int = 16) -> WanTransformer3DModel:
  """Random weights, perturbed (norm gains != 1, biases != 0) and rounded to bf16 values, so the
  same numbers can be stored in fp32 and bf16 files. in_channels=36: an image-to-video expert;
  48 in and out: the TI2V-5B's shape."""
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**{**TINY, "in_channels": in_channels,
                                   "out_channels": out_channels}).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
      p.copy_(p.to(torch.bfloat16).to(torch.float32))
  return model


def original_state_dict(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
  """The model's weights under the original Wan key names, checked against diffusers' own
  single-file converter (so the original layout here does not rest on our key map alone)."""
  diffusers_sd = model.state_dict()
  inverse = {to_diffusers_key(k): k for k in _all_original_keys(model)}
  originals = {inverse[name]: tensor.clone() for name, tensor in diffusers_sd.items()}
  roundtrip = convert_wan_transformer_to_diffusers(dict(originals))
  assert set(roundtrip) == set(diffusers_sd), set(roundtrip) ^ set(diffusers_sd)
  for k, v in roundtrip.items():
    assert torch.equal(v, diffusers_sd[k]), k
  return originals


def _all_original_keys(model: WanTransformer3DModel) -> list[str]:
  keys = ["patch_embedding.weight", "patch_embedding.bias", "head.modulation",
          "head.head.weight", "head.head.bias"]
  for m in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
            "time_projection.1"):
    keys += [f"{m}.weight", f"{m}.bias"]
  for i in range(len(model.blocks)):
    b = f"blocks.{i}"
    keys += [f"{b}.modulation", f"{b}.norm3.weight", f"{b}.norm3.bias"]
    for a in ("self_attn", "cross_attn"):
      for p in ("q", "k", "v", "o"):
        keys += [f"{b}.{a}.{p}.weight", f"{b}.{a}.{p}.bias"]
      keys += [f"{b}.{a}.norm_q.weight", f"{b}.{a}.norm_k.weight"]
    for f in ("ffn.0", "ffn.2"):
      keys += [f"{b}.{f}.weight", f"{b}.{f}.bias"]
  return keys


def save_official_expert(model: WanTransformer3DModel, folder: Path, shards: int = 3,
                         model_type: str | None = None) -> None:
  """An official-layout expert folder: config.json, sharded safetensors and their index.
  model_type: config.json's, by default "i2v" for 36 input channels and "t2v" otherwise."""
  folder.mkdir(parents=True)
  sd = original_state_dict(model)
  keys = sorted(sd)
  weight_map = {}
  for s in range(shards):
    name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: sd[k].contiguous() for k in keys[s::shards]}
    save_file(part, str(folder / name))
    weight_map.update({k: name for k in part})
  (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  cfg = model.config
  (folder / "config.json").write_text(json.dumps({
      "_class_name": "WanModel", "dim": cfg.num_attention_heads * cfg.attention_head_dim,
      "num_heads": cfg.num_attention_heads, "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim,
      "freq_dim": cfg.freq_dim, "in_dim": cfg.in_channels, "out_dim": cfg.out_channels,
      "text_len": TEXT_LEN, "eps": cfg.eps,
      "model_type": model_type or ("i2v" if cfg.in_channels == I2V_IN_CHANNELS else "t2v")}))


def save_comfyui_file(model: WanTransformer3DModel, path: Path,
                      dtype: torch.dtype = torch.bfloat16) -> None:
  """A ComfyUI single file: original keys behind `model.diffusion_model.`, stored in `dtype`."""
  sd = original_state_dict(model)
  save_file({f"model.diffusion_model.{k}": v.to(dtype).contiguous()
             for k, v in sd.items()}, str(path))


def random_inputs(seed: int, batch: int = 2, frames: int = 3, height: int = 6, width: int = 10,
                  prompt_len: int = 11, timesteps=(300.5, 999.0)):
  """Channels-last latents (odd frame count, H != W), timesteps and an unpadded context."""
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((batch, frames, height, width, 16)).astype(np.float32)
  context = rng.standard_normal((batch, prompt_len, TINY["text_dim"])).astype(np.float32)
  return latents, np.asarray(timesteps, np.float32), context


def reference_forward(model: WanTransformer3DModel, latents, timestep, context) -> np.ndarray:
  """diffusers' output for our inputs, back in channels-last layout (context zero-padded)."""
  padded = np.zeros((context.shape[0], TEXT_LEN, context.shape[2]), np.float32)
  padded[:, :context.shape[1]] = context
  with torch.no_grad():
    out = model(torch.from_numpy(latents).permute(0, 4, 1, 2, 3), torch.from_numpy(timestep),
                torch.from_numpy(padded), return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()


def random_condition(latents: np.ndarray, seed: int) -> np.ndarray:
  """An image-to-video condition for `latents`: [B, F, H, W, 20] (4 mask + 16 latent channels)."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((*latents.shape[:4], I2V_IN_CHANNELS - 16)).astype(np.float32)


def i2v_reference_forward(model: WanTransformer3DModel, latents, timestep, context,
                          condition) -> np.ndarray:
  """diffusers' I2V output: the condition joined after the latents on the channel axis."""
  return reference_forward(model, np.concatenate([latents, condition], axis=-1), timestep, context)


def rel_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def save_comfyui_fp8_scaled(model: WanTransformer3DModel, path: Path) -> WanTransformer3DModel:
  """ComfyUI's "fp8_scaled" format: block linears stored float8_e4m3fn with a per-tensor
  scale_weight (and a scale_input and the scaled_fp8 marker that carry nothing for us). Returns
  a reference model holding the dequantised weights the file really encodes."""
  sd = original_state_dict(model)
  out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
  dequantised = {}
  for key, w in sd.items():
    name = f"model.diffusion_model.{key}"
    if key.startswith("blocks.") and key.endswith(".weight") and w.ndim == 2:
      scale = w.abs().max() / 448.0
      q = (w / scale).to(torch.float8_e4m3fn)
      out[name] = q
      out[name[:-len("weight")] + "scale_weight"] = scale.reshape(1)
      out[name[:-len("weight")] + "scale_input"] = torch.ones(1)
      dequantised[key] = q.to(torch.float32) * scale
    else:
      out[name] = w.contiguous()
      dequantised[key] = w
  save_file(out, str(path))
  ref = make_reference(seed=0)
  ref.load_state_dict(convert_wan_transformer_to_diffusers(dequantised))
  return ref

"""Parity with diffusers' WanTransformer3DModel, through the conversion CLI and the loaders."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

import wan_jax
from reference import TINY, random_inputs, reference_forward, rel_error

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
FP32 = dict(dtype="float32")  # float32 parameters compute in float32 unless told otherwise


def forward(model, latents, timestep, context) -> np.ndarray:
  return np.asarray(model(jnp.asarray(latents), jnp.asarray(timestep), jnp.asarray(context)))


@pytest.mark.slow
def test_diffusers_release_through_cli(tmp_path, diffusers_release, high_ref, low_ref):
  out = tmp_path / "converted"
  result = run_cli(diffusers_release, out, "--dtype", "float32")
  assert result.returncode == 0, result.stderr
  assert "diffusers layout" in result.stdout
  assert sorted(p.name for p in out.iterdir()) == ["high_noise", "low_noise", "manifest.json"]
  inputs = random_inputs(seed=0)
  for expert, ref in (("high_noise", high_ref), ("low_noise", low_ref)):
    model = wan_jax.load_transformer(out, expert=expert, **FP32)
    assert rel_error(forward(model, *inputs), reference_forward(ref, *inputs)) < 1e-5


@pytest.mark.slow
def test_official_release_through_cli(tmp_path, official_release, high_ref, low_ref):
  out = tmp_path / "converted"
  result = run_cli(official_release, out, "--dtype", "float32")
  assert result.returncode == 0, result.stderr
  assert "official layout" in result.stdout
  dual = wan_jax.load_dual_transformer(out, **FP32)
  latents, _, context = random_inputs(seed=3)
  for t, ref in ((900.0, high_ref), (100.0, low_ref)):
    timestep = np.full((2,), t, np.float32)
    got = forward(dual, latents, timestep, context)
    assert rel_error(got, reference_forward(ref, latents, timestep, context)) < 1e-5


@pytest.mark.slow
def test_comfyui_bf16_file_through_cli(tmp_path, comfyui_file, high_ref):
  out = tmp_path / "converted"
  result = run_cli(comfyui_file, out, "--dtype", "float32", "--num-heads", "4")
  assert result.returncode == 0, result.stderr
  assert "comfyui layout" in result.stdout
  model = wan_jax.load_transformer(out, **FP32)  # one expert: no name needed
  inputs = random_inputs(seed=4)
  assert rel_error(forward(model, *inputs), reference_forward(high_ref, *inputs)) < 1e-5


@pytest.mark.slow
def test_loading_pytorch_checkpoints_directly(official_release, diffusers_release, high_ref):
  """No conversion step: the loader converts on the fly, from either release layout."""
  inputs = random_inputs(seed=5)
  want = reference_forward(high_ref, *inputs)
  for root in (official_release, diffusers_release):
    model = wan_jax.load_transformer(root, expert="high_noise", **FP32)
    assert rel_error(forward(model, *inputs), want) < 1e-5
  single = wan_jax.load_transformer(diffusers_release / "transformer", **FP32)
  assert rel_error(forward(single, *inputs), want) < 1e-5


@pytest.mark.slow
def test_bf16_parameters_and_compute(tmp_path, diffusers_release, high_ref):
  out = tmp_path / "converted_bf16"
  assert run_cli(diffusers_release, out).returncode == 0  # default dtype: bfloat16
  model = wan_jax.load_transformer(out, expert="high_noise", dtype="bfloat16",
                                   compute_dtype="bfloat16", attention="chunked")
  assert model.blocks.self_attn.q.kernel.value.dtype == jnp.bfloat16
  inputs = random_inputs(seed=6)
  assert rel_error(forward(model, *inputs), reference_forward(high_ref, *inputs)) < 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_real_head_dim_rope_split(tmp_path, attention):
  """head_dim 128 splits RoPE 44/42/42 as in the 14B model."""
  torch.manual_seed(7)
  ref = WanTransformer3DModel(**{**TINY, "num_attention_heads": 2, "attention_head_dim": 128,
                                 "num_layers": 1}).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  ref.save_pretrained(tmp_path / "transformer")
  model = wan_jax.load_transformer(tmp_path / "transformer", dtype="float32",
                                   compute_dtype="float32", attention=attention,
                                   attention_chunk_size=16)
  assert model.config.num_heads == 2 and model.config.rope_split == (44, 42, 42)
  inputs = random_inputs(seed=8, frames=5, height=8, width=14)
  assert rel_error(forward(model, *inputs), reference_forward(ref, *inputs)) < 1e-5


def test_comfyui_fp8_scaled_file(tmp_path, high_ref):
  from reference import save_comfyui_fp8_scaled
  path = tmp_path / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
  ref = save_comfyui_fp8_scaled(high_ref, path)
  model = wan_jax.load_transformer(path, num_heads=4, **FP32)
  inputs = random_inputs(seed=9)
  assert rel_error(forward(model, *inputs), reference_forward(ref, *inputs)) < 1e-5
  # The fp8 rounding is real: the dequantised model is not the original.
  assert rel_error(reference_forward(ref, *inputs), reference_forward(high_ref, *inputs)) > 1e-3

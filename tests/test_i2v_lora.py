"""An image-to-video LoRA trained by wan-jax: diffusers' WanImageToVideoPipeline loads it and its
36-channel transformer gives our output; ComfyUI's merge rule gives the same model; the adapter
sits on the same block linears as for text-to-video, never on the 36-channel patch embedding."""

from __future__ import annotations

import copy
import json

import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from reference import (
  I2V_IN_CHANNELS,
  TINY,
  i2v_reference_forward,
  make_reference,
  original_state_dict,
  random_condition,
  random_inputs,
  rel_error,
  save_official_expert,
)
from safetensors import safe_open
from safetensors.torch import load_file

import wan_jax
from wan_jax.weights import export
from wan_jax.model import lora

# Written out here, not taken from the code under test: the same ten block linears as T2V.
NAMES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
         "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
RANK, ALPHA = 4, 1.5  # scale 0.375: alpha != rank
LATENTS, TIMESTEP, CONTEXT = random_inputs(seed=41, frames=3, height=6, width=10)  # odd F, H != W
CONDITION = random_condition(LATENTS, seed=42)  # [B, F, H, W, 20]
INPUTS = (LATENTS, TIMESTEP, CONTEXT, CONDITION)


def forward(model) -> np.ndarray:
  return np.asarray(model(*map(jnp.asarray, INPUTS)))


@pytest.fixture(scope="module")
def i2v_ref():
  return make_reference(seed=40, in_channels=I2V_IN_CHANNELS)


@pytest.fixture(scope="module")
def trained(i2v_ref, tmp_path_factory):
  """(our I2V model with a trained LoRA, its output, the base output, its LoRA file in fp32)."""
  folder = tmp_path_factory.mktemp("i2v_lora") / "high_noise_model"
  save_official_expert(i2v_ref, folder)
  model = wan_jax.load_transformer(folder, dtype="float32")
  assert model.config.in_channels == I2V_IN_CHANNELS and model.config.condition_channels == 20
  base_out = forward(model)
  assert rel_error(base_out, i2v_reference_forward(i2v_ref, *INPUTS)) < 1e-5  # same base weights
  lora.add_lora(model, RANK, ALPHA, seed=3)
  rng = np.random.default_rng(3)
  for name in NAMES:  # random, nonzero B: a stand-in for a trained adapter
    b = lora.block_linear(model, name).lora_b
    b.value = jnp.asarray(rng.standard_normal(b.shape).astype(np.float32) * 0.3)
  path = folder.parent / "my_i2v_lora.safetensors"
  export.save_lora(model, path, dtype="float32")
  return model, forward(model), base_out, path


@pytest.mark.slow
def test_i2v_lora_file_holds_the_t2v_modules_only(trained):
  _, _, _, path = trained
  with safe_open(str(path), "pt") as f:
    keys, meta = set(f.keys()), f.metadata()
  want = {f"diffusion_model.blocks.{i}.{name}.{part}" for i in range(TINY["num_layers"])
          for name in NAMES for part in ("lora_A.weight", "lora_B.weight", "alpha")}
  assert keys == want
  assert not any("patch_embedding" in k for k in keys)
  assert json.loads(meta["lora_targets"]) == list(NAMES)
  assert json.loads(meta["wan_jax_config"])["in_channels"] == I2V_IN_CHANNELS


def test_diffusers_i2v_pipeline_loads_the_lora_with_the_same_output(trained, i2v_ref):
  _, ours, base_out, path = trained
  assert rel_error(ours, base_out) > 1e-2  # the adapter matters
  pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                                 transformer=copy.deepcopy(i2v_ref))
  pipe.load_lora_weights(str(path))
  adapted = {n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
  assert len(adapted) == len(NAMES) * TINY["num_layers"]
  assert not any("patch_embedding" in n for n in adapted)
  got = i2v_reference_forward(pipe.transformer, *INPUTS)
  assert got.shape == LATENTS.shape
  assert rel_error(got, ours) < 1e-5


def test_comfyui_merge_rule_gives_the_same_i2v_model(trained, i2v_ref):
  """W [out, in] += alpha / rank * up @ down for the weight named by the module without
  `diffusion_model.`, on the 36-channel expert's original weights."""
  _, ours, _, path = trained
  weights = original_state_dict(i2v_ref)
  file = load_file(str(path))
  modules = {k.rsplit(".", 2)[0] for k in file if k.endswith(".lora_A.weight")}
  assert len(modules) == len(NAMES) * TINY["num_layers"]
  for module in modules:
    key = module.removeprefix("diffusion_model.") + ".weight"
    down, up = file[f"{module}.lora_A.weight"], file[f"{module}.lora_B.weight"]
    weights[key] = weights[key] + file[f"{module}.alpha"].item() / down.shape[0] * (up @ down)
  merged = WanTransformer3DModel(**{**TINY, "in_channels": I2V_IN_CHANNELS}).eval()
  merged.load_state_dict(convert_wan_transformer_to_diffusers(weights), strict=True)
  assert rel_error(i2v_reference_forward(merged, *INPUTS), ours) < 1e-5

"""Wan 2.2 I2V-A14B converts like T2V: each layout in one command, the task ("i2v") read off the
36-channel patch embedding, checked against config.json and recorded in the manifest; loading
builds the 36-channel model; experts of different tasks are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import (
  I2V_IN_CHANNELS,
  i2v_reference_forward,
  make_reference,
  random_condition,
  random_inputs,
  rel_error,
  save_comfyui_file,
  save_official_expert,
)
from helpers import run_cli

import wan_jax
from wan_jax.weights import convert
from wan_jax.weights.load import expert_arch, task_of
from wan_jax.weights.safetensors_reader import CheckpointError
from wan_jax.weights.sources import find_experts

FP32 = dict(dtype="float32")


@pytest.fixture(scope="module")
def i2v_refs():
  return {"high_noise": make_reference(seed=21, in_channels=I2V_IN_CHANNELS),
          "low_noise": make_reference(seed=22, in_channels=I2V_IN_CHANNELS)}


@pytest.fixture(scope="module")
def i2v_releases(tmp_path_factory, i2v_refs) -> dict[str, Path]:
  """The I2V-A14B release in each layout users download (tiny experts)."""
  official = tmp_path_factory.mktemp("i2v") / "Wan2.2-I2V-A14B"
  save_official_expert(i2v_refs["high_noise"], official / "high_noise_model")
  save_official_expert(i2v_refs["low_noise"], official / "low_noise_model")
  diffusers = tmp_path_factory.mktemp("i2v") / "Wan2.2-I2V-A14B-Diffusers"
  i2v_refs["high_noise"].save_pretrained(diffusers / "transformer", max_shard_size="60KB")
  i2v_refs["low_noise"].save_pretrained(diffusers / "transformer_2", max_shard_size="60KB")
  (diffusers / "model_index.json").write_text(json.dumps(
      {"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9}))
  comfyui = tmp_path_factory.mktemp("i2v") / "wan2.2_i2v_high_noise_14B_fp16.safetensors"
  save_comfyui_file(i2v_refs["high_noise"], comfyui, dtype=torch.float16)
  return {"official": official, "diffusers": diffusers, "comfyui": comfyui}


def i2v_forward(model, latents, timestep, context, condition) -> np.ndarray:
  return np.asarray(model(*(jnp.asarray(a) for a in (latents, timestep, context, condition))))


def i2v_inputs(seed: int):
  """Odd frame count, H != W, and a random 20-channel condition."""
  latents, timestep, context = random_inputs(seed, frames=5, height=6, width=10)
  return latents, timestep, context, random_condition(latents, seed + 1)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["official", "diffusers", "comfyui"])
def test_an_i2v_release_converts_in_one_command(tmp_path, i2v_releases, i2v_refs, layout):
  out = tmp_path / "converted"
  heads = ["--num-heads", "4"] if layout == "comfyui" else []  # no config.json beside the file
  result = run_cli(i2v_releases[layout], out, "--dtype", "float32", *heads)
  assert result.returncode == 0, result.stderr
  assert f"{layout} layout, image-to-video" in result.stdout
  manifest = json.loads((out / "manifest.json").read_text())
  names = ["transformer"] if layout == "comfyui" else ["high_noise", "low_noise"]
  assert manifest["task"] == "i2v" and sorted(manifest["experts"]) == names
  for entry in manifest["experts"].values():
    assert entry["task"] == "i2v" and entry["config"]["in_channels"] == I2V_IN_CHANNELS
  assert task_of(out) == "i2v" and task_of(i2v_releases[layout], num_heads=4) == "i2v"

  inputs = i2v_inputs(seed=30)
  for name in names:
    model = wan_jax.load_transformer(out, expert=name, **FP32)
    assert model.config.in_channels == I2V_IN_CHANNELS
    ref = i2v_refs["high_noise" if name == "transformer" else name]
    assert rel_error(i2v_forward(model, *inputs), i2v_reference_forward(ref, *inputs)) < 1e-5


@pytest.mark.slow
def test_the_dual_i2v_model_switches_at_0_9(tmp_path, i2v_releases, i2v_refs):
  """Both experts from the converted folder, the boundary from the task: t = 900 is high-noise."""
  out = tmp_path / "converted"
  convert.convert_checkpoint(i2v_releases["official"], out, "float32", log=lambda _: None)
  dual = wan_jax.load_dual_transformer(out, **FP32)
  assert dual.boundary == 0.9
  latents, _, context, condition = i2v_inputs(seed=31)
  for t, name in ((900.0, "high_noise"), (899.0, "low_noise")):
    timestep = np.full((2,), t, np.float32)
    want = i2v_reference_forward(i2v_refs[name], latents, timestep, context, condition)
    assert rel_error(i2v_forward(dual, latents, timestep, context, condition), want) < 1e-5
  # A manifest written before tasks were recorded still answers from the experts' shapes.
  manifest = json.loads((out / "manifest.json").read_text())
  del manifest["task"]
  for entry in manifest["experts"].values():
    del entry["task"]
  (out / "manifest.json").write_text(json.dumps(manifest))
  assert task_of(out) == "i2v"


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_release_folders_load_directly(i2v_releases, i2v_refs, layout):
  """No conversion step: the 36-channel architecture comes from the release itself."""
  root = i2v_releases[layout]
  for name in ("high_noise", "low_noise"):
    assert expert_arch(root, name)["in_channels"] == I2V_IN_CHANNELS
  dual = wan_jax.load_dual_transformer(root, **FP32)
  assert dual.boundary == 0.9 and dual.low_noise.config.condition_channels == 20
  inputs = i2v_inputs(seed=32)
  got = i2v_forward(dual.low_noise, *inputs)
  assert rel_error(got, i2v_reference_forward(i2v_refs["low_noise"], *inputs)) < 1e-5


def test_t2v_folders_say_t2v(tmp_path, official_release, diffusers_release, comfyui_file):
  assert task_of(official_release) == task_of(diffusers_release) == "t2v"
  assert task_of(comfyui_file, num_heads=4) == "t2v"
  out = tmp_path / "converted"
  convert.convert_checkpoint(comfyui_file, out, num_heads=4, log=lambda _: None)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["task"] == "t2v" and manifest["experts"]["transformer"]["task"] == "t2v"
  assert task_of(out) == "t2v"
  assert wan_jax.load_dual_transformer(official_release).boundary == 0.875


def test_a_mixed_release_is_refused_with_one_line(tmp_path, high_ref, i2v_refs):
  """A T2V high-noise expert beside an I2V low-noise one (e.g. a download that mixed releases)."""
  mixed = tmp_path / "mixed"
  save_official_expert(high_ref, mixed / "high_noise_model")
  save_official_expert(i2v_refs["low_noise"], mixed / "low_noise_model")
  out = tmp_path / "converted"
  result = run_cli(mixed, out)
  assert result.returncode == 2 and not out.exists()
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert ("the experts serve different tasks (high_noise is text-to-video, low_noise is "
          "image-to-video)") in lines[0] and str(mixed) in lines[0]
  with pytest.raises(CheckpointError, match="serve different tasks"):
    task_of(mixed)
  with pytest.raises(CheckpointError, match="serve different tasks"):
    wan_jax.load_dual_transformer(mixed)


def test_an_expert_of_another_task_is_not_added_to_a_folder(tmp_path, comfyui_file, i2v_releases):
  out = tmp_path / "converted"
  convert.convert_checkpoint(comfyui_file, out, num_heads=4, log=lambda _: None)
  with pytest.raises(CheckpointError, match=r"holds transformer for text-to-video but .* is "
                                            "image-to-video; convert it into another folder"):
    convert.convert_checkpoint(i2v_releases["official"], out, log=lambda _: None)
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "transformer"]
  # Replacing the folder's only expert with one of the other task is allowed.
  convert.convert_checkpoint(i2v_releases["comfyui"], out, num_heads=4, overwrite=True,
                             log=lambda _: None)
  assert task_of(out) == "i2v"


def test_a_config_json_that_disagrees_with_the_weights(tmp_path, i2v_releases):
  expert = tmp_path / "high_noise_model"
  shutil.copytree(i2v_releases["official"] / "high_noise_model", expert)
  config = json.loads((expert / "config.json").read_text())
  cases = [({"model_type": "t2v"}, "model_type 't2v' but the patch embedding takes 36 input "
                                   "channels, which is image-to-video"),
           ({"in_dim": 16}, "config.json says 16 input channels but the patch embedding takes 36"),
           ({"model_type": "ti2v"}, "model_type 'ti2v' but the patch embedding takes 36 "
                                    "input channels, which is image-to-video"),
           ({"model_type": "s2v"}, "S2V-14B .* is not supported")]
  for change, message in cases:
    (expert / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
      find_experts(expert)


def test_a_wan21_i2v_expert_is_named(tmp_path, i2v_releases):
  """Wan 2.1's I2V experts also take 36 channels but carry a CLIP image branch Wan 2.2 dropped."""
  from safetensors.torch import load_file, save_file
  sd = {}
  for shard in sorted((i2v_releases["official"] / "low_noise_model").glob("*.safetensors")):
    sd.update(load_file(str(shard)))
  sd["img_emb.proj.0.weight"] = torch.zeros(4)
  sd["blocks.0.cross_attn.k_img.weight"] = torch.zeros(4)
  save_file(sd, str(tmp_path / "wan2.1_i2v_480p_14B.safetensors"))
  with pytest.raises(CheckpointError, match="a CLIP image branch: a Wan 2.1 I2V/FLF2V expert"):
    find_experts(tmp_path / "wan2.1_i2v_480p_14B.safetensors", num_heads=4)

"""TI2V-5B's checkpoints: the official release (the transformer's shards at the folder root,
beside the text encoder and tokenizer), its -Diffusers twin (transformer/ only) and ComfyUI's
single file all convert into one expert, "transformer", whose manifest entry says task "ti2v"
and which model it is. Tiny 48-channel models stand in for the 5B.

The folders here hold no VAE: Wan2.2_VAE.pth is TI2V-5B's 48-channel VAE, which the converter
finds but cannot convert yet (it refuses it by name); its test below only checks it is found.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from reference import TEXT_LEN, TINY, rel_error, save_comfyui_file, save_official_expert
from reference_codecs import make_umt5, save_tokenizer, save_umt5_wan_pth
from helpers import run_cli

import wan_jax
from wan_jax.model.config import i2v_a14b, t2v_a14b, ti2v_5b, tiny_ti2v
from wan_jax.weights import checkpoint_tasks, convert
from wan_jax.weights.checkpoint_tasks import (check_declared, common_task, model_of_config,
                                              model_of_entry, task_of_config)
from wan_jax.weights.components import find_components
from wan_jax.weights.load import model_of, task_of
from wan_jax.weights.safetensors_reader import CheckpointError
from wan_jax.weights.sources import find_experts

CHANNELS = 48
FP32 = dict(dtype="float32")
QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def ref_5b() -> WanTransformer3DModel:
  """A tiny 5B-shaped model whose weights are fp16 values (so the fp16 ComfyUI file is exact)."""
  torch.manual_seed(31)
  model = WanTransformer3DModel(**{**TINY, "in_channels": CHANNELS,
                                   "out_channels": CHANNELS}).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
      p.copy_(p.to(torch.float16).to(torch.float32))
  return model


@pytest.fixture(scope="module")
def releases(tmp_path_factory, ref_5b) -> dict[str, Path]:
  """The three layouts a user downloads (without the VAE)."""
  base = tmp_path_factory.mktemp("ti2v")
  official = base / "Wan2.2-TI2V-5B"
  save_official_expert(ref_5b, official, model_type="ti2v")  # shards + index + config.json
  save_umt5_wan_pth(make_umt5(seed=32), official / "models_t5_umt5-xxl-enc-bf16.pth")
  save_tokenizer(official / "google" / "umt5-xxl")
  twin = base / "Wan2.2-TI2V-5B-Diffusers"
  ref_5b.save_pretrained(twin / "transformer", max_shard_size="60KB")
  make_umt5(seed=32).save_pretrained(twin / "text_encoder")
  save_tokenizer(twin / "tokenizer")
  (twin / "model_index.json").write_text("{}")
  comfyui = base / "wan2.2_ti2v_5B_fp16.safetensors"
  save_comfyui_file(ref_5b, comfyui, dtype=torch.float16)
  return {"official": official, "diffusers": twin, "comfyui": comfyui}


def ti2v_inputs(seed: int = 0):
  """Latents [2, 3, 6, 10, 48], timesteps per latent position (0 on the first frame, as for an
  image-conditioned video) and a context; plus diffusers' [B, N] form of the same timesteps."""
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((2, 3, 6, 10, CHANNELS)).astype(np.float32)
  context = rng.standard_normal((2, 11, TINY["text_dim"])).astype(np.float32)
  mask = np.ones((3, 6, 10), np.float32)
  mask[0] = 0
  t_BxFxHxW = np.stack([mask * t for t in (400.0, 950.5)]).astype(np.float32)
  t_BxN = t_BxFxHxW[:, :, ::2, ::2].reshape(2, -1)
  return latents, t_BxFxHxW, context, t_BxN


def reference_output(ref, latents, t_BxN, context) -> np.ndarray:
  padded = np.zeros((2, TEXT_LEN, context.shape[2]), np.float32)
  padded[:, :context.shape[1]] = context
  with torch.no_grad():
    out = ref(torch.from_numpy(latents).permute(0, 4, 1, 2, 3), torch.from_numpy(t_BxN),
              torch.from_numpy(padded), return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()


def assert_matches(model, ref) -> None:
  latents, t, context, t_BxN = ti2v_inputs()
  got = np.asarray(model(jnp.asarray(latents), jnp.asarray(t), jnp.asarray(context)))
  assert rel_error(got, reference_output(ref, latents, t_BxN, context)) < 1e-5


def test_tasks_and_models_from_the_architecture():
  assert [task_of_config(c) for c in (t2v_a14b(), i2v_a14b(), ti2v_5b(), tiny_ti2v())] == [
      "t2v", "i2v", "ti2v", "ti2v"]
  assert [model_of_config(c) for c in (t2v_a14b(), i2v_a14b(), ti2v_5b(), tiny_ti2v())] == [
      "t2v_a14b", "i2v_a14b", "ti2v_5b", None]
  # Manifest entries written before "model" was recorded: read off their architecture.
  assert model_of_entry({"config": ti2v_5b().arch_dict()}) == "ti2v_5b"
  assert model_of_entry({"model": None, "config": ti2v_5b().arch_dict()}) is None


def test_config_json_must_agree():
  cfg = tiny_ti2v()
  assert check_declared({"model_type": "ti2v", "in_dim": 48}, cfg, "x") == "ti2v"
  with pytest.raises(CheckpointError, match=r"x: config.json says model_type 't2v' but the patch "
                                            r"embedding takes 48 input channels, which is "
                                            r"text-image-to-video \(TI2V-5B\) \('ti2v'\)"):
    check_declared({"model_type": "t2v"}, cfg, "x")
  with pytest.raises(CheckpointError, match="model_type 'ti2v' but the patch embedding takes 16 "
                                            "input channels, which is text-to-video"):
    check_declared({"model_type": "ti2v"}, wan_jax.tiny(), "x")
  with pytest.raises(CheckpointError, match="S2V-14B .* is not supported"):
    check_declared({"model_type": "s2v"}, cfg, "x")
  with pytest.raises(CheckpointError, match=r"serve different tasks \(a is text-to-video, b is "
                                            r"text-image-to-video \(TI2V-5B\)\)"):
    common_task("x", {"a": "t2v", "b": "ti2v"})


def test_each_layout_is_one_transformer(releases):
  for layout, path in releases.items():
    found_layout, experts = find_experts(path, num_heads=4)
    assert (found_layout, list(experts)) == (layout, ["transformer"])
    expert = experts["transformer"]
    assert (expert.task, expert.model) == ("ti2v", None)  # tiny: not the 5B's sizes
    assert (expert.config.in_channels, expert.config.out_channels) == (48, 48)
    assert task_of(path, num_heads=4) == "ti2v"


def test_components_of_each_layout(releases, tmp_path):
  assert find_components(releases["official"]).found() == [
      "transformers", "text_encoder", "tokenizer"]
  assert find_components(releases["diffusers"]).found() == [
      "transformers", "text_encoder", "tokenizer"]
  assert find_components(releases["comfyui"]).found() == ["transformers"]
  # The release's own VAE file is found beside the transformer (converting it is another port).
  folder = tmp_path / "Wan2.2-TI2V-5B"
  shutil.copytree(releases["official"], folder)
  (folder / "Wan2.2_VAE.pth").write_bytes(b"")
  found = find_components(folder)
  assert found.vae == folder / "Wan2.2_VAE.pth" and found.transformers == folder


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["official", "diffusers", "comfyui"])
def test_every_layout_converts_with_the_cli(tmp_path, releases, ref_5b, layout):
  out = tmp_path / "converted"
  result = run_cli(releases[layout], out, "--dtype", "float32", "--num-heads", "4")
  assert result.returncode == 0, result.stderr
  assert f"{layout} layout, text-image-to-video (TI2V-5B), experts: transformer" in result.stdout
  manifest = json.loads((out / "manifest.json").read_text())
  entry = manifest["experts"]["transformer"]
  assert list(manifest["experts"]) == ["transformer"] and manifest["task"] == "ti2v"
  assert (entry["task"], entry["model"], entry["layout"]) == ("ti2v", None, layout)
  assert entry["config"]["in_channels"] == entry["config"]["out_channels"] == 48
  want = ["transformer", "manifest.json"] + ([] if layout == "comfyui" else
                                             ["text_encoder", "tokenizer"])
  assert sorted(p.name for p in out.iterdir()) == sorted(want)
  assert task_of(out) == "ti2v" and model_of(out) is None
  assert_matches(wan_jax.load_transformer(out, **FP32), ref_5b)


@pytest.mark.slow
def test_loading_the_releases_directly(releases, ref_5b):
  for path in releases.values():
    assert_matches(wan_jax.load_transformer(path, num_heads=4, **FP32), ref_5b)


def test_the_model_id_reaches_the_manifest(tmp_path, releases, monkeypatch):
  """The 5B's sizes cannot be written here, so the tiny shape stands in for them."""
  shape = (64, 48, 48)
  monkeypatch.setitem(checkpoint_tasks._MODEL_BY_SHAPE, shape, "ti2v_5b")
  out = tmp_path / "converted"
  convert.convert_checkpoint(releases["comfyui"], out, num_heads=4, **QUIET)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["experts"]["transformer"]["model"] == "ti2v_5b"
  assert model_of(out) == model_of(releases["comfyui"], num_heads=4) == "ti2v_5b"


def test_ti2v_and_a14b_do_not_share_a_folder(tmp_path, releases, official_release):
  out = tmp_path / "converted"
  convert.convert_checkpoint(official_release, out, only=["transformers"], **QUIET)
  with pytest.raises(CheckpointError, match=r"holds high_noise, low_noise for text-to-video but "
                                            r".* is text-image-to-video \(TI2V-5B\); convert it "
                                            "into another folder"):
    convert.convert_checkpoint(releases["comfyui"], out, num_heads=4, **QUIET)
  ti2v = tmp_path / "ti2v"
  convert.convert_checkpoint(releases["comfyui"], ti2v, num_heads=4, **QUIET)
  with pytest.raises(ValueError, match=r"holds text-image-to-video \(TI2V-5B\): one "
                                       "transformer, not two experts; load it with "
                                       "load_transformer"):
    wan_jax.load_dual_transformer(ti2v)
  with pytest.raises(ValueError, match="one transformer, not two experts"):
    wan_jax.load_dual_transformer(releases["official"], num_heads=4)

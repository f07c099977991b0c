"""Wan 2.2 TI2V-5B end to end: the README's demo through launch.py, and the path a user takes with
a download (the official release layout with its Wan 2.2 VAE, umT5 and tokenizer -> convert ->
train -> a LoRA file that diffusers' 5B pipeline and ComfyUI's merge rule load to our output)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from helpers import REPO, assert_quiet, get_config, launch, run_cli
from reference import (
  TINY,
  make_reference,
  original_state_dict,
  reference_forward,
  rel_error,
  save_official_expert,
)
from reference_codecs import (
  VAE22_TINY,
  make_umt5,
  make_vae22,
  save_tokenizer,
  save_umt5_wan_pth,
  save_vae22_pth,
)
from safetensors import safe_open
from safetensors.torch import load_file

import wan_jax
from wan_jax.data.demo import make_clip_dataset

CHANNELS = 48


@pytest.mark.slow
def test_the_readmes_5b_demo_runs_verbatim(tmp_path):
  """`python launch.py --config configs/wan22_5b_masked.py:tiny`: one model (no expert switch),
  one LoRA file per save with no expert in its name, previews at 24 fps, the second prompt from a
  generated start image."""
  (tmp_path / "configs").symlink_to(REPO / "configs")
  result = launch("--config", "configs/wan22_5b_masked.py:tiny", cwd=tmp_path)
  assert_quiet(result, 0, bars=True)
  out = result.stdout
  assert "trained 24 steps" in out and "nan" not in out.lower()
  assert "(1, 32, 64), (5, 32, 64)" in out  # buckets: sides a multiple of 32 (16x VAE, patch 2)
  run = tmp_path / "runs/demo_5b"
  assert sorted(p.name for p in (run / "lora").iterdir()) == [
      "demo_5b_lora.safetensors", "demo_5b_lora_000012.safetensors"]
  with safe_open(str(run / "lora/demo_5b_lora.safetensors"), "np") as f:
    meta, keys = f.metadata(), set(f.keys())
  assert meta["modelspec.architecture"] == "wan-2.2-ti2v-tiny/lora"
  assert meta["modelspec.timestep_range"] == "0,1000" and meta["expert"] == "transformer"
  assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in keys
  rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert {r["expert"] for r in rows if "loss" in r} == {"high"}  # the one model's slot
  assert sorted(p.name for p in (run / "previews").glob("step_000024_*.mp4")) == [
      "step_000024_0.mp4", "step_000024_1.mp4"]
  meta = iio.immeta(run / "previews/step_000024_1.mp4", plugin="pyav")
  assert meta["fps"] == 24
  assert iio.imread(run / "previews/step_000024_1.mp4", plugin="pyav").shape == (5, 64, 64, 3)
  described = (run / "previews/step_000024.txt").read_text()
  assert "shift 5.0, guidance low/high 5.0/5.0" in described
  assert f"(from {run / 'demo_data/preview_start_64x64.png'})" in described
  assert described.count("(from") == 1  # the text-only prompt names no image


@pytest.fixture(scope="module")
def ref_5b() -> WanTransformer3DModel:
  return make_reference(seed=51, in_channels=CHANNELS, out_channels=CHANNELS)


@pytest.fixture(scope="module")
def trained_5b(tmp_path_factory, ref_5b):
  """A tiny Wan2.2-TI2V-5B download in the official layout, converted by the CLI, then trained
  with configs/wan22_5b_masked.py for 2 steps (every row image-to-video) with a preview."""
  root = tmp_path_factory.mktemp("ti2v_release")
  release = root / "Wan2.2-TI2V-5B"
  save_official_expert(ref_5b, release, model_type="ti2v")
  save_vae22_pth(make_vae22(VAE22_TINY, seed=52), release / "Wan2.2_VAE.pth")
  save_umt5_wan_pth(make_umt5(seed=53), release / "models_t5_umt5-xxl-enc-bf16.pth")
  save_tokenizer(release / "google" / "umt5-xxl")
  out = root / "converted"
  result = run_cli(release, out, "--num-heads", "4", "--dtype", "float32")
  assert result.returncode == 0, result.stderr
  cfg = get_config("", "wan22_5b_masked.py")
  media, masks = make_clip_dataset(root / "data", 96, 64, 5, clips=2)
  cfg.model.name_or_path = str(out)
  cfg.model.dtype = "float32"
  cfg.ti2v.i2v_prob = 1.0
  cfg.lora.rank, cfg.lora.alpha = 2, 2.0
  cfg.train.steps, cfg.train.batch_size, cfg.train.learning_rate = 2, 2, 1e-2
  cfg.checkpoint.every, cfg.save.every, cfg.preview.every = 2, 0, 2
  cfg.preview.height, cfg.preview.width, cfg.preview.num_frames = 32, 64, 5
  cfg.preview.num_steps = 1
  cfg.preview.images = [str(root / "start.png")]
  iio.imwrite(root / "start.png", np.full((32, 64, 3), 200, np.uint8))
  cfg.cache.dir = str(root / "cache")
  ds = cfg.datasets[0]
  ds.folder_path, ds.mask_path, ds.resolution, ds.num_frames = str(media), str(masks), [64], 5
  from wan_jax.train.run.trainer import train
  summary = train(cfg, root / "run", progress=False)
  return out, summary, root / "run"


@pytest.mark.slow
def test_a_converted_5b_release_trains_and_its_lora_loads_in_diffusers_and_comfyui(
    trained_5b, ref_5b):
  out, summary, run = trained_5b
  manifest = json.loads((out / "manifest.json").read_text())
  assert list(manifest["experts"]) == ["transformer"]
  assert manifest["experts"]["transformer"]["task"] == "ti2v"  # (model: None at tiny sizes)
  assert manifest["vae"]["config"]["z_dim"] == CHANNELS
  assert summary.steps == 2 and summary.skipped_steps == 0
  names = sorted(Path(f).name for f in summary.files)
  assert "wan22_5b_lora.safetensors" in names and "step_000002_0.mp4" in names
  path = run / "lora/wan22_5b_lora.safetensors"
  assert "(from " in (run / "previews/step_000002.txt").read_text()

  # Our model with the file's LoRA vs diffusers' 5B pipeline with the same file, on per-token
  # timesteps (the image frame at t = 0, as WanPipeline's expand_timesteps builds them).
  model = wan_jax.load_transformer(out, dtype="float32")
  from wan_jax.sampling.loras import apply_lora
  apply_lora(model, path)
  rng = np.random.default_rng(5)
  latents = rng.standard_normal((1, 3, 6, 10, CHANNELS)).astype(np.float32)
  context = rng.standard_normal((1, 7, TINY["text_dim"])).astype(np.float32)
  t = np.full((1, 3, 6, 10), 700.0, np.float32)
  t[:, 0] = 0.0
  ours = np.asarray(model(jnp.asarray(latents), jnp.asarray(t), jnp.asarray(context)))
  base = np.asarray(wan_jax.load_transformer(out, dtype="float32")(
      jnp.asarray(latents), jnp.asarray(t), jnp.asarray(context)))
  assert rel_error(ours, base) > 1e-4  # the trained adapter changes the output

  def diffusers_out(transformer) -> np.ndarray:  # per-token t: one per 1x2x2 patch
    return reference_forward(transformer, latents, t[:, :, ::2, ::2].reshape(1, -1), context)

  pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                     transformer=copy.deepcopy(ref_5b), expand_timesteps=True)
  pipe.load_lora_weights(str(path))
  assert rel_error(diffusers_out(pipe.transformer), ours) < 1e-5

  weights = original_state_dict(ref_5b)  # ComfyUI: W += alpha / rank * up @ down
  file = load_file(str(path))
  for module in {k.rsplit(".", 2)[0] for k in file if k.endswith(".lora_A.weight")}:
    key = module.removeprefix("diffusion_model.") + ".weight"
    down, up = file[f"{module}.lora_A.weight"], file[f"{module}.lora_B.weight"]
    weights[key] = weights[key] + file[f"{module}.alpha"].item() / down.shape[0] * (up @ down)
  merged = WanTransformer3DModel(**{**TINY, "in_channels": CHANNELS,
                                    "out_channels": CHANNELS}).eval()
  merged.load_state_dict(convert_wan_transformer_to_diffusers(weights), strict=True)
  assert rel_error(diffusers_out(merged), ours) < 1e-5

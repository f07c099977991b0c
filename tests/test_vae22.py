"""The Wan 2.2 VAE (TI2V-5B) against diffusers' AutoencoderKLWan(is_residual=True), fp32, on an odd
frame count and non-square frames, loaded through the real key maps from both layouts: diffusers'
folder and the official `Wan2.2_VAE.pth` (read without pickle).

The official names are written here by hand from upstream's module tree (wan/modules/vae2_2.py:
one nested Sequential per level, `encoder.downsamples.i.downsamples.j`, its last entry the
resampler), independently of `wan_jax.weights.vae_keys`.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx
from reference_codecs import VAE22_REAL, VAE22_TINY, make_vae22, vae22_original_key

import wan_jax
from wan_jax.model.vae import WanVAE, decode_latents, encode_video
from wan_jax.model.vae_config import (
  LATENTS_MEAN_22,
  LATENTS_STD_22,
  VAEConfig,
  tiny_vae,
  tiny_vae22,
  wan21_vae,
  wan22_vae,
)
from wan_jax.weights import vae_keys
from wan_jax.weights.assemble import assemble, check_tensors, expected_shapes

def rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def video(shape, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def ref() -> AutoencoderKLWan:
  return make_vae22(VAE22_TINY, seed=7)


@pytest.fixture(scope="module")
def files(tmp_path_factory, ref) -> dict[str, Path]:
  root = tmp_path_factory.mktemp("vae22")
  ref.save_pretrained(root / "vae")
  official = {vae22_original_key(k): v.clone() for k, v in ref.state_dict().items()}
  torch.save(official, root / "Wan2.2_VAE.pth")
  return {"diffusers": root / "vae", "pth": root / "Wan2.2_VAE.pth"}


def reference_moments(vae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  with torch.no_grad():
    dist = vae.encode(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).latent_dist
  return (dist.mean.permute(0, 2, 3, 4, 1).numpy(), dist.logvar.permute(0, 2, 3, 4, 1).numpy())


def reference_decode(vae, latents: np.ndarray) -> np.ndarray:
  cfg = vae.config
  raw = latents * np.array(cfg.latents_std, np.float32) + np.array(cfg.latents_mean, np.float32)
  with torch.no_grad():
    out = vae.decode(torch.from_numpy(raw).permute(0, 4, 1, 2, 3)).sample
  return out.permute(0, 2, 3, 4, 1).numpy()


def test_configs_and_latent_geometry():
  v21, v22 = wan21_vae(), wan22_vae()
  assert (v21.spatial_factor, v21.temporal_factor, v21.latent_channels) == (8, 4, 16)
  assert (v22.spatial_factor, v22.temporal_factor, v22.latent_channels) == (16, 4, 48)
  assert (v22.pixel_channels, v22.decoder_dim, tiny_vae22().spatial_factor) == (12, 256, 16)
  # A 2.1 manifest is what it was: no 2.2 field written, and an old one reads back the same.
  old = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
         "temporal_downsample": [False, True, True], "latents_mean": list(v21.latents_mean),
         "latents_std": list(v21.latents_std)}
  assert v21.arch_dict() == old and tiny_vae().arch_dict().keys() == old.keys()
  assert VAEConfig.from_arch_dict(old) == v21
  assert VAEConfig.from_arch_dict(v22.arch_dict()) == v22


def test_released_architecture_from_shapes():
  """The released VAE's tensors (diffusers, built on the meta device) give wan22_vae() and fit
  our model's parameter tree exactly (704.7M parameters)."""
  from accelerate import init_empty_weights
  with init_empty_weights():
    real = AutoencoderKLWan(**VAE22_REAL)
  shapes = {k: tuple(v.shape) for k, v in real.state_dict().items()}
  assert vae_keys.infer_config(shapes) == wan22_vae()
  assert vae_keys.infer_config(shapes, dict(real.config)) == wan22_vae()
  ours = dict(vae_keys.diffusers_to_ours(k, np.empty(s, np.uint8)) for k, s in shapes.items())
  want = expected_shapes(lambda: WanVAE(wan22_vae(), rngs=nnx.Rngs(0)))
  check_tensors("Wan2.2 VAE", {k: v.shape for k, v in ours.items()}, want)
  assert sum(int(np.prod(s)) for s in want.values()) == 704_688_668
  # and the official names of all of them map back
  names = vae_keys.original_to_diffusers([vae22_original_key(k) for k in shapes])
  assert sorted(names.values()) == sorted(shapes)


def test_official_names_map_back(ref):
  want = ref.state_dict()
  official = {vae22_original_key(k): k for k in want}
  assert "encoder.downsamples.1.downsamples.2.time_conv.weight" in official
  assert "decoder.upsamples.0.upsamples.3.resample.1.weight" in official
  assert "decoder.upsamples.3.upsamples.0.shortcut.weight" in official
  assert vae_keys.detect_layout(official) == "original"
  assert vae_keys.original_to_diffusers(official) == official


def test_tiny_config_is_inferred(ref):
  shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  assert vae_keys.infer_config(shapes) == tiny_vae22()
  assert vae_keys.infer_config(shapes, dict(ref.config)) == tiny_vae22()
  with pytest.raises(vae_keys.CheckpointError, match="is_residual"):
    vae_keys.infer_config(shapes, {"is_residual": False})


@pytest.mark.slow
def test_encode_and_decode_match_diffusers(ref, files):
  """9 frames (frame 0, then two chunks of 4) at 32x48 (2x3 latent pixels), batch 2."""
  vae = wan_jax.load_vae(files["diffusers"])
  assert vae.config == tiny_vae22(param_dtype="float32", compute_dtype="float32")
  x = video((2, 9, 32, 48, 3))
  want_mean, want_logvar = reference_moments(ref, x)
  mean, logvar = vae.moments(jnp.asarray(x))
  assert mean.shape == (2, 3, 2, 3, 48)
  errors = {"mean": rel_error(mean, want_mean),
            "logvar": rel_error(np.clip(logvar, -30, 20), want_logvar)}
  norm = (want_mean - np.array(LATENTS_MEAN_22, np.float32)) / np.array(LATENTS_STD_22, np.float32)
  errors["encode"] = rel_error(vae.encode(jnp.asarray(x)), norm)

  z = np.random.RandomState(1).randn(2, 3, 2, 3, 48).astype(np.float32)
  decoded = vae.decode(jnp.asarray(z))
  assert decoded.shape == (2, 9, 32, 48, 3)
  want = reference_decode(ref, z)
  assert (np.abs(want) < 1).mean() > 0.95  # mostly unclamped: the comparison sees real values
  errors["decode"] = rel_error(decoded, want)
  print("max relative errors:", errors)
  assert max(errors.values()) < 1e-5, errors


@pytest.mark.slow
def test_official_pth_loads_the_same_weights(ref, files):
  """Wan2.2_VAE.pth (official names, torch.save) -> the same parameters as the diffusers folder,
  and an image (one frame, portrait) encodes and decodes as diffusers does."""
  from_pth = wan_jax.load_vae(files["pth"])
  from_diffusers = wan_jax.load_vae(files["diffusers"])
  assert from_pth.config == from_diffusers.config
  a, b = nnx.state(from_pth).to_pure_dict(), nnx.state(from_diffusers).to_pure_dict()
  flat_a, flat_b = nnx.traversals.flatten_mapping(a), nnx.traversals.flatten_mapping(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=str(key))

  # through the compiled entry points the trainer uses
  x = video((1, 1, 48, 32, 3), seed=3)
  want_mean, _ = reference_moments(ref, x)
  norm = (want_mean - np.array(LATENTS_MEAN_22, np.float32)) / np.array(LATENTS_STD_22, np.float32)
  assert rel_error(encode_video(from_pth, jnp.asarray(x)), norm) < 1e-5
  z = np.random.RandomState(4).randn(1, 1, 3, 2, 48).astype(np.float32)
  want = reference_decode(ref, z)
  assert rel_error(decode_latents(from_pth, jnp.asarray(z)), want) < 1e-5
  bf16 = wan_jax.load_vae(files["pth"], dtype="bfloat16")
  assert bf16.decoder.up_blocks[0].upsampler.resample.kernel[...].dtype == jnp.bfloat16
  assert rel_error(bf16.encode(jnp.asarray(x)), norm) < 3e-2
  assert rel_error(bf16.decode(jnp.asarray(z)), want) < 3e-2


@pytest.mark.slow
def test_converter_cli_writes_a_22_manifest(tmp_path, files):
  from helpers import run_cli
  from wan_jax.weights import checkpoint
  result = run_cli(files["pth"], tmp_path / "out")
  assert result.returncode == 0, result.stderr
  arch = checkpoint.read_manifest(tmp_path / "out")["vae"]["config"]
  assert arch["is_residual"] is True and arch["patch_size"] == 2 and arch["decoder_base_dim"] == 12
  vae = wan_jax.load_vae(tmp_path / "out")
  assert vae.config == tiny_vae22(param_dtype="float32", compute_dtype="float32")


def test_bad_shapes_name_the_16x_stride():
  vae = nnx.eval_shape(lambda: WanVAE(tiny_vae22(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="multiples of 16"):
    vae.moments(jnp.zeros((1, 5, 24, 32, 3)))
  with pytest.raises(ValueError, match="latents must be"):
    vae.decode(jnp.zeros((1, 2, 2, 2, 16)))


def test_model_assembles_from_diffusers_tensors(ref):
  """Every tensor of the tiny diffusers VAE lands on one of our parameters, none left over."""
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  params = dict(vae_keys.diffusers_to_ours(k, v) for k, v in sd.items())
  vae = assemble(lambda: WanVAE(tiny_vae22(), rngs=nnx.Rngs(0)), params)
  kernel = vae.decoder.up_blocks[0].upsampler.resample.kernel[...]
  torch_w = sd["decoder.up_blocks.0.upsampler.resample.1.weight"]
  np.testing.assert_array_equal(kernel, torch_w.transpose(2, 3, 1, 0))

"""The Flax VAE (Wan 2.1) against diffusers' AutoencoderKLWan, loaded through the converter from
both key layouts (Wan's `.pth` and diffusers' folder), on odd frame counts and non-square frames.
The Wan 2.2 VAE has its own file: test_vae22.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from reference_codecs import make_vae, save_vae_diffusers, save_vae_pth, vae_original_state_dict

import wan_jax
from wan_jax.weights import vae_keys

REPO = Path(__file__).resolve().parents[1]


def rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def reference_encode(vae, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(normalised posterior mean, clipped log-variance), channels-last, from diffusers."""
  with torch.no_grad():
    dist = vae.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist
  mean = dist.mean.permute(0, 2, 3, 4, 1).numpy()
  cfg = vae.config
  norm = (mean - np.array(cfg.latents_mean, np.float32)) / np.array(cfg.latents_std, np.float32)
  return norm, dist.logvar.permute(0, 2, 3, 4, 1).numpy()


def reference_decode(vae, latents: np.ndarray) -> np.ndarray:
  cfg = vae.config
  raw = latents * np.array(cfg.latents_std, np.float32) + np.array(cfg.latents_mean, np.float32)
  with torch.no_grad():
    out = vae.decode(torch.from_numpy(raw).permute(0, 4, 1, 2, 3)).sample
  return out.permute(0, 2, 3, 4, 1).numpy()


def video(shape, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_vae():
  return make_vae(base_dim=8, seed=3)


@pytest.fixture(scope="session")
def tiny_vae_files(tmp_path_factory, tiny_vae) -> dict[str, Path]:
  root = tmp_path_factory.mktemp("vae")
  return {"pth": save_vae_pth(tiny_vae, root / "Wan2.1_VAE.pth"),
          "diffusers": save_vae_diffusers(tiny_vae, root / "vae")}


def test_original_layout_is_what_diffusers_converts_from(tiny_vae):
  """Our test's original keys are the real ones: diffusers' converter maps them back exactly,
  and our key map agrees with diffusers' converter on every key."""
  original = vae_original_state_dict(tiny_vae)
  converted = convert_wan_vae_to_diffusers(original)
  want = tiny_vae.state_dict()
  assert sorted(converted) == sorted(want)
  for key, value in converted.items():
    assert torch.equal(value, want[key]), key
  ours = vae_keys.original_to_diffusers(original)
  back = {ours[k]: v for k, v in original.items()}
  assert sorted(back) == sorted(want)
  for key, value in back.items():
    assert torch.equal(value, want[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pth", "diffusers"])
def test_encode_and_decode_match_diffusers_through_the_cli(tmp_path, tiny_vae, tiny_vae_files,
                                                           layout):
  out = tmp_path / "converted"
  result = subprocess.run([sys.executable, str(REPO / "convert" / "wan22.py"),
                           str(tiny_vae_files[layout]), str(out)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert "vae" in result.stdout and (out / "vae").is_dir()
  vae = wan_jax.load_vae(out)
  assert vae.config.base_dim == 8 and vae.config.param_dtype == "float32"

  x = video((2, 9, 24, 40, 3))  # 9 frames: frame 0 alone, then two chunks of 4; H != W
  want_mean, want_logvar = reference_encode(tiny_vae, x)
  mean, logvar = vae.moments(jnp.asarray(x))
  assert mean.shape == (2, 3, 3, 5, 16)
  assert rel_error(vae.encode(jnp.asarray(x)), want_mean) < 1e-4
  assert rel_error(np.clip(logvar, -30, 20), want_logvar) < 1e-4

  z = np.random.RandomState(1).randn(2, 3, 3, 5, 16).astype(np.float32)
  decoded = vae.decode(jnp.asarray(z))
  assert decoded.shape == (2, 9, 24, 40, 3)
  want = reference_decode(tiny_vae, z)
  assert (np.abs(want) < 1).mean() > 0.95  # mostly unclamped: the comparison sees real values
  assert rel_error(decoded, want) < 1e-4


@pytest.mark.slow
def test_real_channel_sizes_from_a_pth_file(tmp_path):
  """base_dim 96 (the released widths), 5 frames at 16x24, loaded straight from the .pth."""
  ref = make_vae(base_dim=96, seed=4)
  path = save_vae_pth(ref, tmp_path / "Wan2.1_VAE.pth")
  vae = wan_jax.load_vae(path)
  assert vae.config == wan_jax.VAEConfig()
  x = video((1, 5, 16, 24, 3), seed=2)
  assert rel_error(vae.encode(jnp.asarray(x)), reference_encode(ref, x)[0]) < 1e-4
  z = np.random.RandomState(3).randn(1, 2, 2, 3, 16).astype(np.float32)
  assert rel_error(vae.decode(jnp.asarray(z)), reference_decode(ref, z)) < 1e-4


@pytest.mark.slow
def test_single_frame_and_bf16(tiny_vae, tiny_vae_files):
  x = video((1, 1, 32, 16, 3), seed=5)  # an image: one frame, portrait
  want = reference_encode(tiny_vae, x)[0]
  vae = wan_jax.load_vae(tiny_vae_files["diffusers"])
  assert rel_error(vae.encode(jnp.asarray(x)), want) < 1e-4
  vae16 = wan_jax.load_vae(tiny_vae_files["diffusers"], dtype="bfloat16")
  assert vae16.encoder.conv_in.kernel[...].dtype == jnp.bfloat16
  assert rel_error(vae16.encode(jnp.asarray(x)), want) < 2e-2


@pytest.mark.slow
def test_sampling_draws_from_the_posterior(tiny_vae_files):
  vae = wan_jax.load_vae(tiny_vae_files["pth"])
  x = jnp.asarray(video((1, 5, 16, 16, 3), seed=6))
  mean, logvar = vae.moments(x)
  key = jax.random.key(0)
  drawn = vae.encode(x, sample=True, key=key)
  eps = jax.random.normal(key, mean.shape)
  want = vae.normalize(mean + jnp.exp(0.5 * jnp.clip(logvar, -30, 20)) * eps)
  np.testing.assert_allclose(drawn, want, rtol=1e-6, atol=1e-6)
  assert not np.allclose(drawn, vae.encode(x))
  assert not np.allclose(drawn, vae.encode(x, sample=True, key=jax.random.key(1)))
  with pytest.raises(ValueError, match="PRNG key"):
    vae.encode(x, sample=True)


def test_bad_shapes_are_explained(tiny_vae_files):
  vae = wan_jax.load_vae(tiny_vae_files["pth"])
  with pytest.raises(ValueError, match="4k\\+1"):
    vae.encode(jnp.zeros((1, 8, 16, 16, 3)))
  with pytest.raises(ValueError, match="multiples of 8"):
    vae.encode(jnp.zeros((1, 5, 20, 16, 3)))
  with pytest.raises(ValueError, match="channels-last"):
    vae.encode(jnp.zeros((1, 3, 5, 16, 16)))
  with pytest.raises(ValueError, match="latents must be"):
    vae.decode(jnp.zeros((1, 2, 2, 2, 4)))


@pytest.mark.slow
def test_incomplete_vae_files_are_explained(tmp_path, tiny_vae):
  from helpers import run_cli
  sd = vae_original_state_dict(tiny_vae)
  del sd["decoder.upsamples.12.residual.2.weight"]
  torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
  result = run_cli(tmp_path / "Wan2.1_VAE.pth", tmp_path / "out")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "decoder.up_blocks.3.resnets.0.conv1" in result.stderr
  sd = vae_original_state_dict(tiny_vae)
  sd["decoder.upsamples.0.residual.2.weight"] = torch.zeros(3, 3, 3, 3, 3)
  torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
  result = run_cli(tmp_path / "Wan2.1_VAE.pth", tmp_path / "out")
  assert result.returncode == 2 and "wrong shape" in result.stderr


@pytest.mark.slow
def test_chunked_mid_attention(tiny_vae):
  """Frames with more latent pixels than `attention_xla_max_tokens` take the chunked softmax."""
  x = video((1, 1, 48, 40, 3), seed=8)  # 6x5 = 30 latent pixels per frame
  want = reference_encode(tiny_vae, x)[0]
  sd = {k: v.numpy() for k, v in tiny_vae.state_dict().items()}
  cfg = vae_keys.infer_config({k: v.shape for k, v in sd.items()}, attention_xla_max_tokens=8,
                              attention_chunk_size=8)
  from flax import nnx

  from wan_jax.model.vae import WanVAE
  from wan_jax.weights.assemble import assemble
  params = dict(vae_keys.diffusers_to_ours(k, v) for k, v in sd.items())
  vae = assemble(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), params)
  assert rel_error(vae.encode(jnp.asarray(x)), want) < 1e-4

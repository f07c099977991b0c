"""The I2V condition against diffusers' `WanImageToVideoPipeline.prepare_latents` (Wan 2.2 A14B's
path, expand_timesteps=False) on a tiny AutoencoderKLWan whose weights are copied into our VAE;
odd frame counts and non-square frames, with and without a last image."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from flax import nnx
from reference_codecs import make_vae

import wan_jax
from wan_jax.model.i2v_condition import encode_condition
from wan_jax.model.vae import WanVAE
from wan_jax.weights import vae_keys
from wan_jax.weights.assemble import assemble

H, W = 48, 64  # non-square: 6 x 8 latent pixels


def rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def ref_vae():
  return make_vae(base_dim=8, seed=7)


@pytest.fixture(scope="module")
def vae(ref_vae) -> WanVAE:
  sd = {k: v.numpy() for k, v in ref_vae.state_dict().items()}
  cfg = vae_keys.infer_config({k: v.shape for k, v in sd.items()})
  params = dict(vae_keys.diffusers_to_ours(k, v) for k, v in sd.items())
  return assemble(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), params)


def images(b: int, seed: int) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, (b, H, W, 3)).astype(np.float32)


def reference(ref_vae, image: np.ndarray, num_frames: int,
              last_image: np.ndarray | None = None) -> np.ndarray:
  """diffusers' condition, one image at a time as its pipeline does, channels-last."""
  pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=None)
  assert not pipe.config.expand_timesteps  # the Wan 2.2 A14B path
  to_torch = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # [1, 3, H, W]
  latent_frames = (num_frames - 1) // 4 + 1
  out = []
  for i in range(image.shape[0]):
    with torch.no_grad():
      _, condition = pipe.prepare_latents(
          to_torch(image[i]), 1, 16, H, W, num_frames, dtype=torch.float32,
          device=torch.device("cpu"), latents=torch.zeros(1, 16, latent_frames, H // 8, W // 8),
          last_image=None if last_image is None else to_torch(last_image[i]))
    out.append(condition.permute(0, 2, 3, 4, 1).numpy())
  return np.concatenate(out)


@pytest.mark.slow
def test_matches_diffusers_first_frame(vae, ref_vae):
  """Through the compiled form: 9 frames = frame 0 alone, then two groups of 4."""
  image = images(2, seed=1)
  got = encode_condition(vae, jnp.asarray(image), 9)
  assert got.shape == (2, 3, H // 8, W // 8, 20) and got.dtype == jnp.float32
  want = reference(ref_vae, image, 9)
  np.testing.assert_array_equal(got[..., :4], want[..., :4])
  assert rel_error(got[..., 4:], want[..., 4:]) < 1e-4
  # the mask: every channel of latent frame 0 (pixel frame 0 repeated), nothing after it
  assert (got[:, 0, ..., :4] == 1).all() and (got[:, 1:, ..., :4] == 0).all()


@pytest.mark.slow
def test_matches_diffusers_first_and_last_frame(vae, ref_vae):
  """Eagerly, 5 frames: the last image is pixel frame 4, the last channel of latent frame 1."""
  image, last = images(2, seed=2), images(2, seed=3)
  got = wan_jax.i2v_condition(vae, jnp.asarray(image), 5, jnp.asarray(last))
  assert got.shape == (2, 2, H // 8, W // 8, 20)
  want = reference(ref_vae, image, 5, last)
  np.testing.assert_array_equal(got[..., :4], want[..., :4])
  assert rel_error(got[..., 4:], want[..., 4:]) < 1e-4
  assert (got[:, 0, ..., :4] == 1).all()
  assert (got[:, 1, ..., :4] == jnp.asarray([0.0, 0.0, 0.0, 1.0])).all()


def test_bad_inputs_are_explained(vae):
  image = jnp.zeros((1, H, W, 3))
  for frames in (8, 0, 10):
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1"):
      wan_jax.i2v_condition(vae, image, frames)
  with pytest.raises(ValueError, match="multiples of 8"):
    wan_jax.i2v_condition(vae, jnp.zeros((1, 44, W, 3)), 5)
  with pytest.raises(ValueError, match="multiples of 8"):
    wan_jax.i2v_condition(vae, jnp.zeros((1, H, 60, 3)), 5)
  with pytest.raises(ValueError, match="channels-last"):
    wan_jax.i2v_condition(vae, jnp.zeros((1, 3, H, W)), 5)
  with pytest.raises(ValueError, match="shape of image"):
    wan_jax.i2v_condition(vae, image, 5, jnp.zeros((1, H, W + 8, 3)))
  with pytest.raises(ValueError, match="shape of image"):
    wan_jax.i2v_condition(vae, image, 5, jnp.zeros((2, H, W, 3)))
  with pytest.raises(ValueError, match="num_frames >= 5"):
    wan_jax.i2v_condition(vae, image, 1, image)

"""The image-to-video condition: what Wan 2.2 I2V-A14B reads beside its noisy latents.

The I2V transformer takes 36 input channels: the 16 noisy latents, then this 20-channel condition.
The condition says which frames are given and what they look like: a video made of the given image
as frame 0, zeros elsewhere (and, for first-last-frame, the last image as the final frame) is
encoded by the VAE (posterior mean, normalised like the training latents), and 4 mask channels go
in front of those 16 latents. The mask is 1 on given pixel frames and 0 elsewhere; frame 0's value
is repeated 4 times so that the 4k+1 pixel frames fill k+1 latent frames x 4 channels, channel c of
latent frame t standing for pixel frame 4t+c-3 (frame 0 for t = 0). Built as upstream does (Wan2.2
`wan/image2video.py`, diffusers `WanImageToVideoPipeline.prepare_latents` with
`expand_timesteps=False`).

Everything but `num_frames` may be traced: `encode_condition` is the compiled form.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.vae import WanVAE

F32 = jnp.float32
MASK_CHANNELS = 4  # = the VAE's temporal factor: one channel per pixel frame of a latent frame


def condition_mask(num_frames: int, temporal_factor: int, last_frame: bool) -> np.ndarray:
  """[k+1, temporal_factor] float32: 1 where the pixel frame behind (latent frame, channel) is
  given. A host-side constant (its shape and values depend only on static arguments)."""
  given = np.zeros(num_frames, np.float32)
  given[0] = 1.0
  if last_frame:
    given[-1] = 1.0
  # frame 0 stands alone in its latent frame: repeat it so every latent frame holds t pixel frames
  expanded = np.concatenate([np.repeat(given[:1], temporal_factor), given[1:]])
  return expanded.reshape(-1, temporal_factor)


def _check(vae: WanVAE, image: jax.Array, num_frames: int,
           last_image: jax.Array | None) -> None:
  cfg = vae.config
  s, t = cfg.spatial_factor, cfg.temporal_factor
  if t != MASK_CHANNELS:
    raise ValueError(f"the I2V condition has {MASK_CHANNELS} mask channels, one per frame of a "
                     f"latent frame; this VAE folds {t} frames into one")
  if image.ndim != 4 or image.shape[-1] != 3:
    raise ValueError(f"image must be channels-last [B, H, W, 3] in [-1, 1], got {image.shape}")
  _, h, w, _ = image.shape
  if h % s or w % s:
    raise ValueError(f"image {image.shape}: height and width must be multiples of {s} "
                     f"(got H={h}, W={w})")
  if num_frames < 1 or (num_frames - 1) % t:
    raise ValueError(f"num_frames must be {t}k+1 (1, 5, 9, ..., 81), got {num_frames}")
  if last_image is not None:
    if last_image.shape != image.shape:
      raise ValueError(f"last_image {last_image.shape} must have the shape of image {image.shape}")
    if num_frames < 2:
      raise ValueError("a last image needs num_frames >= 5: with 1 frame it would be the first")


def i2v_condition(vae: WanVAE, image: jax.Array, num_frames: int,
                  last_image: jax.Array | None = None) -> jax.Array:
  """image [B, H, W, 3] in [-1, 1] -> condition [B, (num_frames-1)//4+1, H/8, W/8, 20], fp32:
  4 mask channels, then the normalised latents of the conditioning video (one VAE encode).

  last_image [B, H, W, 3]: also condition on the final frame (first-last-frame interpolation).
  num_frames must be a Python int (static under jit).
  """
  num_frames = operator.index(num_frames)
  _check(vae, image, num_frames, last_image)
  b, h, w, c = image.shape
  given_last = [] if last_image is None else [last_image[:, None].astype(image.dtype)]
  zeros = jnp.zeros((b, num_frames - 1 - len(given_last), h, w, c), image.dtype)
  video_BxFxHxWx3 = jnp.concatenate([image[:, None], zeros, *given_last], axis=1)
  latents_BxTxhxwxZ = vae.encode(video_BxFxHxWx3)  # posterior mean, normalised

  mask_TxM = condition_mask(num_frames, vae.config.temporal_factor, last_image is not None)
  _, t, lh, lw, _ = latents_BxTxhxwxZ.shape
  mask_BxTxhxwxM = jnp.broadcast_to(jnp.asarray(mask_TxM, F32)[None, :, None, None, :],
                                    (b, t, lh, lw, MASK_CHANNELS))
  return jnp.concatenate([mask_BxTxhxwxM, latents_BxTxhxwxZ.astype(F32)], axis=-1)


@functools.partial(nnx.jit, static_argnames=("num_frames",))
def encode_condition(vae: WanVAE, image: jax.Array, num_frames: int,
                     last_image: jax.Array | None = None) -> jax.Array:
  """`i2v_condition` compiled (once per shape, frame count and with/without last image)."""
  return i2v_condition(vae, image, num_frames, last_image)

"""The Wan 2.2 VAE's own parts (TI2V-5B's `Wan2.2_VAE.pth`), channels-last.

Against the 2.1 VAE: pixels are folded into 2x2 patches (12 channels) before the encoder and
unfolded after the decoder; each encoder level is one block whose input also skips past it,
averaged down to the block's output grid (`avg_down`), and each decoder level likewise adds its
input duplicated up to the output grid (`dup_up`). The shortcuts hold no weights and no state:
they see only the current chunk, as upstream's do. On the decoder's first chunk (latent frame 0,
which makes one pixel frame) the temporal duplication keeps only its last frame.

Names follow diffusers' `AutoencoderKLWan(is_residual=True)`: down_blocks.i.{resnets.j,
downsampler}, up_blocks.i.{resnets.j, upsampler}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wan_jax.model.vae_config import VAEConfig
from wan_jax.model.vae_layers import Cache, Resample, ResidualBlock, run_cached


def patchify(x_BxFxHxWxC: jax.Array, p: int) -> jax.Array:
  """[B, F, H, W, C] -> [B, F, H/p, W/p, C*p*p], channels ordered (c, pw, ph) as upstream's
  "b c f (h q) (w r) -> b (c r q) f h w"."""
  if p == 1:
    return x_BxFxHxWxC
  b, f, h, w, c = x_BxFxHxWxC.shape
  x = x_BxFxHxWxC.reshape(b, f, h // p, p, w // p, p, c)  # b f h q w r c
  return x.transpose(0, 1, 2, 4, 6, 5, 3).reshape(b, f, h // p, w // p, c * p * p)


def unpatchify(x_BxFxhxwxK: jax.Array, p: int) -> jax.Array:
  """The inverse of `patchify`: [B, F, h, w, C*p*p] -> [B, F, h*p, w*p, C]."""
  if p == 1:
    return x_BxFxhxwxK
  b, f, h, w, k = x_BxFxhxwxK.shape
  x = x_BxFxhxwxK.reshape(b, f, h, w, k // (p * p), p, p)  # b f h w c r q
  return x.transpose(0, 1, 2, 6, 3, 5, 4).reshape(b, f, h * p, w * p, k // (p * p))


def avg_down(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
  """Upstream's AvgDown3D: fold each ft x fs x fs block into channels ordered (c, t, h, w), then
  average groups of consecutive channels down to `cout`. A frame count that ft does not divide
  (the first chunk's single frame) is zero-padded in front."""
  b, t, h, w, c = x.shape
  pad_t = (ft - t % ft) % ft
  if pad_t:
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    t += pad_t
  group = c * ft * fs * fs // cout
  x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # b t' h' w' c ft fs fs
  x = x.reshape(b, t // ft, h // fs, w // fs, cout, group)
  return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, cout: int, ft: int, fs: int, first_chunk: bool) -> jax.Array:
  """Upstream's DupUp3D: repeat each channel, read the copies as (cout, ft, fs, fs) and unfold
  them into time and space. On the first chunk the first ft-1 frames are dropped (one frame in,
  one frame out), matching the main path, which skips its time convolution there."""
  b, t, h, w, c = x.shape
  x = jnp.repeat(x, cout * ft * fs * fs // c, axis=-1)
  x = x.reshape(b, t, h, w, cout, ft, fs, fs)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # b t ft h fs w fs cout
  x = x.reshape(b, t * ft, h * fs, w * fs, cout)
  return x[:, ft - 1:] if first_chunk else x


class ResidualDownBlock(nnx.Module):
  """One encoder level: residual blocks, then (except the last level) a 2x down-sampler (3D
  where temporal), plus the level's input averaged onto the output grid."""

  def __init__(self, cin: int, cout: int, *, temporal: bool, down: bool, cfg: VAEConfig,
               rngs: nnx.Rngs):
    self.cout, self.ft, self.fs = cout, (2 if temporal else 1), (2 if down else 1)
    if (cin * self.ft * self.fs ** 2) % cout:
      raise ValueError(f"AvgDown3D: {cin}x{self.ft * self.fs ** 2} is not a multiple of {cout}")
    blocks = []
    for _ in range(cfg.num_res_blocks):
      blocks.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
      cin = cout
    self.resnets = nnx.List(blocks)
    mode = "downsample3d" if temporal else "downsample2d"
    self.downsampler = Resample(cout, mode, cfg=cfg, rngs=rngs) if down else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    layers = [*self.resnets, *([self.downsampler] if self.downsampler is not None else [])]
    y, cache = run_cached(layers, x, cache)
    return y + avg_down(x, self.cout, self.ft, self.fs), cache


class ResidualUpBlock(nnx.Module):
  """One decoder level: num_res_blocks + 1 residual blocks, then (except the last level) a 2x
  up-sampler that keeps the width, plus the level's input duplicated onto the output grid."""

  def __init__(self, cin: int, cout: int, *, temporal: bool, up: bool, cfg: VAEConfig,
               rngs: nnx.Rngs):
    self.cout, self.ft, self.up = cout, (2 if temporal else 1), up
    if up and (cout * self.ft * 4) % cin:
      raise ValueError(f"DupUp3D: {cout}x{self.ft * 4} is not a multiple of {cin}")
    blocks = []
    for _ in range(cfg.num_res_blocks + 1):
      blocks.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
      cin = cout
    self.resnets = nnx.List(blocks)
    mode = "upsample3d" if temporal else "upsample2d"
    self.upsampler = Resample(cout, mode, up_dim=cout, cfg=cfg, rngs=rngs) if up else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    layers = [*self.resnets, *([self.upsampler] if self.upsampler is not None else [])]
    y, new_cache = run_cached(layers, x, cache)
    if self.up:  # cache None: the first chunk
      y = y + dup_up(x, self.cout, self.ft, 2, first_chunk=cache is None)
    return y, new_cache

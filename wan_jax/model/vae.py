"""The Wan causal video VAEs in Flax NNX, channels-last: video [B, F, H, W, 3] in [-1, 1].

One class for both: the Wan 2.1 VAE (both A14B experts) and the Wan 2.2 VAE (TI2V-5B), chosen by
the config (`is_residual`, `patch_size`, `decoder_base_dim`; its parts in `vae_residual`).

Upstream encodes frame 0 alone and then chunks of 4 frames, and decodes one latent frame at a
time, carrying a small cache between chunks: every causal 3x3x3 convolution keeps the last two
frames of its input, and the temporal down/upsampling keeps its own state and skips its time
convolution on the first chunk. That chunking changes the result (the time convolutions of the
resampling layers never see across the first chunk's boundary), so it is reproduced exactly: the
first chunk runs on its own and a `lax.scan` carries the cache over the others. Memory therefore
holds one chunk's activations whatever the clip length.

Parameter names follow diffusers' `AutoencoderKLWan`; `wan_jax.weights.vae_keys` maps the
original Wan keys onto them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wan_jax.model.vae_config import VAEConfig
from wan_jax.model.vae_layers import (
  F32,
  Cache,
  CausalConv3d,
  MidBlock,
  Resample,
  ResidualBlock,
  RMSNorm,
  run_cached,
)
from wan_jax.model.vae_residual import ResidualDownBlock, ResidualUpBlock, patchify, unpatchify


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(cfg.pixel_channels, dims[0], (3, 3, 3), cfg=cfg, rngs=rngs)
    blocks = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      last = i == len(cfg.dim_mult) - 1
      if cfg.is_residual:  # 2.2: one block per level
        temporal = not last and cfg.temporal_downsample[i]
        blocks.append(ResidualDownBlock(cin, cout, temporal=temporal, down=not last, cfg=cfg,
                                        rngs=rngs))
        continue
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
        cin = cout
      if not last:
        mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
        blocks.append(Resample(cout, mode, cfg=cfg, rngs=rngs))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], cfg=cfg, rngs=rngs)
    self.norm_out = RMSNorm(dims[-1], cfg=cfg)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), cfg=cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_down, c_mid, c_out = cache if cache is not None else (None,) * 4
    x, c_in = self.conv_in(x, c_in)
    x, c_down = run_cached(self.down_blocks, x, c_down)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
    return x, (c_in, c_down, c_mid, c_out)


class UpBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, mode: str | None, *, cfg: VAEConfig, rngs: nnx.Rngs):
    resnets = []
    for _ in range(cfg.num_res_blocks + 1):
      resnets.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
      cin = cout
    self.resnets = nnx.List(resnets)
    self.upsamplers = nnx.List([Resample(cout, mode, cfg=cfg, rngs=rngs)] if mode else [])

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    return run_cached([*self.resnets, *self.upsamplers], x, cache)


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    mult = cfg.dim_mult
    dims = [cfg.decoder_dim * m for m in (mult[-1], *mult[::-1])]
    temporal_upsample = cfg.temporal_downsample[::-1]
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), cfg=cfg, rngs=rngs)
    self.mid_block = MidBlock(dims[0], cfg=cfg, rngs=rngs)
    blocks = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      up = i < len(mult) - 1
      if cfg.is_residual:  # 2.2: the upsamplers keep the width
        blocks.append(ResidualUpBlock(cin, cout, temporal=up and temporal_upsample[i], up=up,
                                      cfg=cfg, rngs=rngs))
        continue
      if i > 0:
        cin //= 2  # the previous upsampler's conv halved the channels
      mode = None
      if up:
        mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
      blocks.append(UpBlock(cin, cout, mode, cfg=cfg, rngs=rngs))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], cfg=cfg)
    self.conv_out = CausalConv3d(dims[-1], cfg.pixel_channels, (3, 3, 3), cfg=cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_mid, c_up, c_out = cache if cache is not None else (None,) * 4
    x, c_in = self.conv_in(x, c_in)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_up = run_cached(self.up_blocks, x, c_up)
    x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
    return x, (c_in, c_mid, c_up, c_out)


def _chunked(step, first: jax.Array, rest_BxNxK: jax.Array) -> jax.Array:
  """step(x, cache) -> (y, cache) on `first`, then scanned over the N chunks of `rest`.

  Returns the outputs concatenated along time: [B, F_first + N * F_chunk, ...].
  """
  y0, cache = step(first, None)
  if rest_BxNxK.shape[1] == 0:
    return y0
  chunks = jnp.moveaxis(rest_BxNxK, 1, 0)  # [N, B, K, ...]

  def body(cache, chunk):
    y, cache = step(chunk, cache)
    return cache, y

  _, ys = jax.lax.scan(body, cache, chunks)  # [N, B, F_chunk, ...]
  ys = jnp.moveaxis(ys, 0, 1)
  ys = ys.reshape(ys.shape[0], -1, *ys.shape[3:])
  return jnp.concatenate([y0, ys], axis=1)


class WanVAE(nnx.Module):
  """encode: video [B, 4k+1, H, W, 3] in [-1, 1] -> normalised latents [B, k+1, H/s, W/s, z_dim]
  (s = config.spatial_factor: 8 and z_dim 16 for 2.1, 16 and 48 for 2.2); decode: the inverse,
  clamped to [-1, 1]. H and W must be multiples of s."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    conv1 = functools.partial(CausalConv3d, kernel=(1, 1, 1), cfg=cfg, rngs=rngs)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.quant_conv = conv1(2 * cfg.z_dim, 2 * cfg.z_dim)
    self.post_quant_conv = conv1(cfg.z_dim, cfg.z_dim)
    self.decoder = Decoder(cfg, rngs=rngs)

  def _check_video(self, video: jax.Array) -> None:
    cfg = self.config
    s, t = cfg.spatial_factor, cfg.temporal_factor
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be channels-last [B, F, H, W, 3], got {video.shape}")
    _, f, h, w, _ = video.shape
    if (f - 1) % t or h % s or w % s:
      raise ValueError(f"video {video.shape}: frames must be {t}k+1 and height/width multiples "
                       f"of {s} (got F={f}, H={h}, W={w})")

  def moments(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior's (mean, log-variance), un-normalised, fp32: [B, F', H/s, W/s, z_dim] each."""
    self._check_video(video)
    t = self.config.temporal_factor
    x = patchify(video.astype(jnp.dtype(self.config.compute_dtype)), self.config.patch_size)
    b, f = x.shape[:2]
    rest = x[:, 1:].reshape(b, (f - 1) // t, t, *x.shape[2:])
    h = _chunked(self.encoder, x[:, :1], rest)
    h = self.quant_conv(h)[0].astype(F32)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, logvar

  def normalize(self, z: jax.Array) -> jax.Array:
    return normalize_latents(z, self.config.latents_mean, self.config.latents_std)

  def denormalize(self, latents: jax.Array) -> jax.Array:
    cfg = self.config
    return latents * jnp.asarray(cfg.latents_std, F32) + jnp.asarray(cfg.latents_mean, F32)

  def encode(self, video: jax.Array, sample: bool = False,
             key: jax.Array | None = None) -> jax.Array:
    """Normalised latents: the posterior mean, or (sample=True) a draw from the posterior."""
    mean, logvar = self.moments(video)
    if sample:
      if key is None:
        raise ValueError("encode(sample=True) needs a PRNG key")
      mean = sample_posterior(mean, logvar, key)
    return self.normalize(mean)

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents [B, F', h, w, z_dim] -> video [B, 4(F'-1)+1, s*h, s*w, 3] in [-1, 1]."""
    cfg = self.config
    if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim:
      raise ValueError(f"latents must be [B, F, H, W, {cfg.z_dim}], got {latents.shape}")
    z = self.denormalize(latents.astype(F32)).astype(jnp.dtype(cfg.compute_dtype))
    x = self.post_quant_conv(z)[0]
    video = unpatchify(_chunked(self.decoder, x[:, :1], x[:, 1:, None]), cfg.patch_size)
    return jnp.clip(video.astype(F32), -1.0, 1.0)


def normalize_latents(z: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(z - mean) / std per channel: what the transformer sees. A function of the config's
  constants only, so training from cached moments needs no VAE."""
  return (z - jnp.asarray(mean, F32)) / jnp.asarray(std, F32)


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """mean + std * eps with the log-variance clipped to [-30, 20], as diffusers does."""
  std = jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0))
  return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


@functools.partial(nnx.jit, static_argnames=("sample",))
def encode_video(vae: WanVAE, video: jax.Array, sample: bool = False,
                 key: jax.Array | None = None) -> jax.Array:
  """`vae.encode` compiled (once per input shape)."""
  return vae.encode(video, sample=sample, key=key)


@nnx.jit
def decode_latents(vae: WanVAE, latents: jax.Array) -> jax.Array:
  """`vae.decode` compiled (once per latent shape)."""
  return vae.decode(latents)

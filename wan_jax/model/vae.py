"""The Wan 2.1 causal video VAE in Flax NNX, channels-last: video [B, F, H, W, 3] in [-1, 1].

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
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wan_jax.model.attention import attention
from wan_jax.model.layers import matmul_precision, normal
from wan_jax.model.vae_config import VAEConfig

F32 = jnp.float32
Cache = Any  # a module's carried state: arrays, tuples of them, or None before the first chunk
CACHE_FRAMES = 2  # a causal 3-tap time convolution needs the two frames before a chunk


def _init(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, dtype) -> nnx.Param:
  return nnx.Param(normal(rngs, shape, 1.0 / math.sqrt(max(fan_in, 1)), dtype))  # 0: empty


class CausalConv3d(nnx.Module):
  """Conv3d padded causally in time (two frames in front, from the cache or zeros).

  kernel [kt, kh, kw, in, out]. `causal=False` is the unpadded strided time convolution of the
  3D downsampler, whose state its owner manages.
  """

  def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], *, cfg: VAEConfig,
               rngs: nnx.Rngs, stride_t: int = 1, causal: bool = True):
    kt, kh, kw = kernel
    pd = jnp.dtype(cfg.param_dtype)
    self.kernel = _init(rngs, (kt, kh, kw, cin, cout), kt * kh * kw * cin, pd)
    self.bias = nnx.Param(jnp.zeros((cout,), pd))
    self.time_pad = kt - 1 if causal else 0
    self.space_pad = (kh // 2, kw // 2)
    self.stride_t = stride_t
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)

  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    new_cache = None
    if self.time_pad:
      if cache is None:
        cache = jnp.zeros((x.shape[0], self.time_pad, *x.shape[2:]), x.dtype)
      x = jnp.concatenate([cache, x], axis=1)
      new_cache = x[:, -self.time_pad:]
    cd = self.compute_dtype
    (ph, pw) = self.space_pad
    y = jax.lax.conv_general_dilated(
        x.astype(cd), self.kernel[...].astype(cd), window_strides=(self.stride_t, 1, 1),
        padding=[(0, 0), (ph, ph), (pw, pw)], dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        precision=matmul_precision(cd))
    return y + self.bias[...].astype(cd), new_cache


class Conv2d(nnx.Module):
  """A per-frame 3x3 convolution (the spatial half of the resamplers); kernel [kh, kw, in, out]."""

  def __init__(self, cin: int, cout: int, *, stride: int, padding: tuple[int, int, int, int],
               cfg: VAEConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.kernel = _init(rngs, (3, 3, cin, cout), 9 * cin, pd)
    self.bias = nnx.Param(jnp.zeros((cout,), pd))
    self.stride = stride
    self.padding = padding  # (top, bottom, left, right)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)

  def __call__(self, x_BxTxHxWxC: jax.Array) -> jax.Array:
    b, t = x_BxTxHxWxC.shape[:2]
    cd = self.compute_dtype
    top, bottom, left, right = self.padding
    y = jax.lax.conv_general_dilated(
        x_BxTxHxWxC.reshape(b * t, *x_BxTxHxWxC.shape[2:]).astype(cd),
        self.kernel[...].astype(cd), window_strides=(self.stride, self.stride),
        padding=[(top, bottom), (left, right)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=matmul_precision(cd))
    y = y + self.bias[...].astype(cd)
    return y.reshape(b, t, *y.shape[1:])


class RMSNorm(nnx.Module):
  """x / ||x|| * sqrt(C) * gamma over channels (upstream's RMS_norm via F.normalize), in fp32."""

  def __init__(self, dim: int, *, cfg: VAEConfig):
    self.gamma = nnx.Param(jnp.ones((dim,), jnp.dtype(cfg.param_dtype)))
    self.scale = math.sqrt(dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(F32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(F32)
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """[RMS, SiLU, conv 3^3, RMS, SiLU, conv 3^3] + shortcut (a 1^3 conv when channels change)."""

  def __init__(self, cin: int, cout: int, *, cfg: VAEConfig, rngs: nnx.Rngs):
    conv = functools.partial(CausalConv3d, cfg=cfg, rngs=rngs)
    self.norm1 = RMSNorm(cin, cfg=cfg)
    self.conv1 = conv(cin, cout, (3, 3, 3))
    self.norm2 = RMSNorm(cout, cfg=cfg)
    self.conv2 = conv(cout, cout, (3, 3, 3))
    self.conv_shortcut = conv(cin, cout, (1, 1, 1)) if cin != cout else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c1, c2 = cache if cache is not None else (None, None)
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
    y, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
    y, c2 = self.conv2(jax.nn.silu(self.norm2(y)), c2)
    return y + shortcut, (c1, c2)


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the pixels of each frame (the mid blocks)."""

  def __init__(self, dim: int, *, cfg: VAEConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.norm = RMSNorm(dim, cfg=cfg)
    self.to_qkv = _init(rngs, (dim, 3 * dim), dim, pd)
    self.to_qkv_bias = nnx.Param(jnp.zeros((3 * dim,), pd))
    self.proj = _init(rngs, (dim, dim), dim, pd)
    self.proj_bias = nnx.Param(jnp.zeros((dim,), pd))
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)
    self.chunk_size = cfg.attention_chunk_size
    self.xla_max_tokens = cfg.attention_xla_max_tokens

  def __call__(self, x_BxTxHxWxC: jax.Array) -> jax.Array:
    b, t, h, w, c = x_BxTxHxWxC.shape
    cd = self.compute_dtype
    prec = matmul_precision(cd)
    tokens = self.norm(x_BxTxHxWxC).reshape(b * t, h * w, c).astype(cd)
    qkv = jnp.matmul(tokens, self.to_qkv[...].astype(cd), precision=prec)
    qkv = qkv + self.to_qkv_bias[...].astype(cd)
    q, k, v = (a[:, :, None, :] for a in jnp.split(qkv, 3, axis=-1))
    impl = "xla" if h * w <= self.xla_max_tokens else "chunked"
    y = attention(q, k, v, impl=impl, chunk_size=self.chunk_size)[:, :, 0, :]
    y = jnp.matmul(y, self.proj[...].astype(cd), precision=prec) + self.proj_bias[...].astype(cd)
    return x_BxTxHxWxC + y.reshape(b, t, h, w, c)


class Resample(nnx.Module):
  """2x spatial down/upsampling, with 2x temporal down/upsampling in the 3D modes.

  downsample: zero-pad right/bottom, 3x3 conv stride 2; in 3D a (3,1,1) stride-2 time conv over
  [last frame of the previous chunk, this chunk]. upsample: nearest x2, 3x3 conv to C/2; in 3D a
  causal time conv to 2C whose halves become frames 2t and 2t+1. The first chunk (cache None)
  skips the time convolution in both directions, as upstream does.
  """

  def __init__(self, dim: int, mode: str, *, cfg: VAEConfig, rngs: nnx.Rngs):
    self.mode = mode
    if mode.startswith("down"):
      self.resample = Conv2d(dim, dim, stride=2, padding=(0, 1, 0, 1), cfg=cfg, rngs=rngs)
      self.time_conv = (CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, causal=False, cfg=cfg,
                                     rngs=rngs) if mode == "downsample3d" else None)
    else:
      self.resample = Conv2d(dim, dim // 2, stride=1, padding=(1, 1, 1, 1), cfg=cfg, rngs=rngs)
      self.time_conv = (CausalConv3d(dim, 2 * dim, (3, 1, 1), cfg=cfg, rngs=rngs)
                        if mode == "upsample3d" else None)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    if self.mode == "upsample3d":
      if cache is None:
        new_cache = jnp.zeros((x.shape[0], CACHE_FRAMES, *x.shape[2:]), x.dtype)
      else:
        y, new_cache = self.time_conv(x, cache)
        b, t, h, w, _ = y.shape
        x = y.reshape(b, t, h, w, 2, -1).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, -1)
    if self.mode.startswith("up"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    x = self.resample(x)
    if self.mode == "downsample3d":
      new_cache = x[:, -1:]
      if cache is not None:
        x = self.time_conv(jnp.concatenate([cache, x], axis=1))[0]
    return x, (new_cache if self.time_conv is not None else None)


class MidBlock(nnx.Module):
  def __init__(self, dim: int, *, cfg: VAEConfig, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, cfg=cfg, rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(dim, cfg=cfg, rngs=rngs)])

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c0, c1 = cache if cache is not None else (None, None)
    x, c0 = self.resnets[0](x, c0)
    x, c1 = self.resnets[1](self.attentions[0](x), c1)
    return x, (c0, c1)


def _run(layers, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  """Runs cached layers in order; cache None (the first chunk) gives every layer None."""
  new = []
  for i, layer in enumerate(layers):
    x, c = layer(x, None if cache is None else cache[i])
    new.append(c)
  return x, tuple(new)


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(3, dims[0], (3, 3, 3), cfg=cfg, rngs=rngs)
    blocks = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(cin, cout, cfg=cfg, rngs=rngs))
        cin = cout
      if i < len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
        blocks.append(Resample(cout, mode, cfg=cfg, rngs=rngs))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], cfg=cfg, rngs=rngs)
    self.norm_out = RMSNorm(dims[-1], cfg=cfg)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), cfg=cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_down, c_mid, c_out = cache if cache is not None else (None,) * 4
    x, c_in = self.conv_in(x, c_in)
    x, c_down = _run(self.down_blocks, x, c_down)
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
    return _run([*self.resnets, *self.upsamplers], x, cache)


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    mult = cfg.dim_mult
    dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
    temporal_upsample = cfg.temporal_downsample[::-1]
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), cfg=cfg, rngs=rngs)
    self.mid_block = MidBlock(dims[0], cfg=cfg, rngs=rngs)
    blocks = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      if i > 0:
        cin //= 2  # the previous upsampler's conv halved the channels
      mode = None
      if i < len(mult) - 1:
        mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
      blocks.append(UpBlock(cin, cout, mode, cfg=cfg, rngs=rngs))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], cfg=cfg)
    self.conv_out = CausalConv3d(dims[-1], 3, (3, 3, 3), cfg=cfg, rngs=rngs)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_mid, c_up, c_out = cache if cache is not None else (None,) * 4
    x, c_in = self.conv_in(x, c_in)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_up = _run(self.up_blocks, x, c_up)
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
  """encode: video [B, 4k+1, H, W, 3] in [-1, 1] -> normalised latents [B, k+1, H/8, W/8, 16];
  decode: the inverse, clamped to [-1, 1]. H and W must be multiples of 8."""

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
    """The posterior's (mean, log-variance), un-normalised, fp32: [B, F', H/8, W/8, z_dim] each."""
    self._check_video(video)
    t = self.config.temporal_factor
    x = video.astype(jnp.dtype(self.config.compute_dtype))
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
    """Normalised latents [B, F', h, w, z_dim] -> video [B, 4(F'-1)+1, 8h, 8w, 3] in [-1, 1]."""
    cfg = self.config
    if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim:
      raise ValueError(f"latents must be [B, F, H, W, {cfg.z_dim}], got {latents.shape}")
    z = self.denormalize(latents.astype(F32)).astype(jnp.dtype(cfg.compute_dtype))
    x = self.post_quant_conv(z)[0]
    video = _chunked(self.decoder, x[:, :1], x[:, 1:, None])
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

"""The building blocks shared by both Wan VAEs (2.1 and 2.2), channels-last.

Every cached layer is a function (x, cache) -> (y, new cache); cache None means "the first chunk"
and each layer derives its own first-chunk behaviour from it (zeros in front for causal
convolutions, no time convolution in the 3D resamplers), exactly as upstream's feat_cache does.
"""

from __future__ import annotations

import functools
import math
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
  skips the time convolution in both directions, as upstream does. up_dim: the upsampling conv's
  output width (2.1 halves the channels there; 2.2 keeps them).
  """

  def __init__(self, dim: int, mode: str, *, cfg: VAEConfig, rngs: nnx.Rngs,
               up_dim: int | None = None):
    self.mode = mode
    if mode.startswith("down"):
      self.resample = Conv2d(dim, dim, stride=2, padding=(0, 1, 0, 1), cfg=cfg, rngs=rngs)
      self.time_conv = (CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, causal=False, cfg=cfg,
                                     rngs=rngs) if mode == "downsample3d" else None)
    else:
      up_dim = dim // 2 if up_dim is None else up_dim
      self.resample = Conv2d(dim, up_dim, stride=1, padding=(1, 1, 1, 1), cfg=cfg, rngs=rngs)
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


def run_cached(layers, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  """Runs cached layers in order; cache None (the first chunk) gives every layer None."""
  new = []
  for i, layer in enumerate(layers):
    x, c = layer(x, None if cache is None else cache[i])
    new.append(c)
  return x, tuple(new)

"""The umT5 encoder (Wan 2.2's text encoder, umT5-XXL) in Flax NNX.

encoder(input_ids [B, L] int, attention_mask [B, L] 0/1) -> [B, L, d_model] float32.
Differences from a textbook transformer that matter for parity: no 1/sqrt(d) in attention, a
relative-position bias table in every layer (umT5; T5 shares layer 0's), RMSNorm without mean
subtraction, unscaled embeddings and a gated-GELU(tanh) FFN. The residual stream, norms and
softmax run in fp32; the matmuls in `compute_dtype`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.layers import Linear, RMSNorm, matmul_precision, normal

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """Encoder sizes (defaults: umT5-XXL) and the runtime dtypes."""

  vocab_size: int = 256384
  d_model: int = 4096
  num_heads: int = 64
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  param_dtype: str = "bfloat16"
  compute_dtype: str = "bfloat16"

  def __post_init__(self):
    if self.num_buckets % 4:
      raise ValueError(f"num_buckets must be a multiple of 4, got {self.num_buckets}")

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  def replace(self, **changes: Any) -> UMT5Config:
    return dataclasses.replace(self, **changes)


def umt5_xxl(**runtime: Any) -> UMT5Config:
  """The umT5-XXL encoder Wan 2.x uses (about 5.68B parameters)."""
  return UMT5Config(**runtime)


def umt5_tiny(**runtime: Any) -> UMT5Config:
  """A few-layer fp32 encoder for tests and demos; heads * d_kv != d_model on purpose."""
  arch = {"vocab_size": 300, "d_model": 48, "num_heads": 4, "d_kv": 10, "d_ff": 72,
          "num_layers": 3}
  return UMT5Config(**{**arch, "param_dtype": "float32", "compute_dtype": "float32", **runtime})


def relative_bucket(relative: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of (key position - query position), int32.

  Half the buckets per direction; within one, |r| < max_exact is its own bucket and larger
  distances are log-spaced up to max_distance. The log runs in float32 exactly as the reference
  does it, so the truncation lands on the same integer (tested against transformers).
  """
  half = num_buckets // 2
  max_exact = half // 2
  distance = np.abs(relative)
  ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
  log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64)
  bucket = np.where(distance < max_exact, distance, np.minimum(large, half - 1))
  return (bucket + (relative > 0) * half).astype(np.int32)


@functools.lru_cache(maxsize=16)
def bucket_table(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[L, L] buckets, row = query, column = key; built on the host since L is static."""
  positions = np.arange(length)
  return relative_bucket(positions[None, :] - positions[:, None], num_buckets, max_distance)


class Embedding(nnx.Module):
  """A plain lookup table [num, dim] in param_dtype."""

  def __init__(self, num: int, dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.embedding = nnx.Param(normal(rngs, (num, dim), 1.0, param_dtype))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0)


class SelfAttention(nnx.Module):
  """Unscaled multi-head self-attention plus this layer's relative-position bias.

  The logits leave the matmul in fp32 even in bf16: without the 1/sqrt(d) they are large, and
  rounding them to bf16 before the softmax costs about a third of the bf16 error.
  """

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    pd, cd = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    lin = functools.partial(Linear, param_dtype=pd, compute_dtype=cd, rngs=rngs, use_bias=False)
    self.q = lin(cfg.d_model, cfg.inner_dim)
    self.k = lin(cfg.d_model, cfg.inner_dim)
    self.v = lin(cfg.d_model, cfg.inner_dim)
    self.o = lin(cfg.inner_dim, cfg.d_model)
    self.num_heads = cfg.num_heads
    self.compute_dtype = cd

  def __call__(self, x_BxLxD: jax.Array, bias_HxLxL: jax.Array,
               key_mask_BxL: jax.Array) -> jax.Array:
    cd = self.compute_dtype
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)
    q, k, v = split(self.q(x_BxLxD)), split(self.k(x_BxLxD)), split(self.v(x_BxLxD))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=matmul_precision(cd),
                        preferred_element_type=F32)
    logits = logits + bias_HxLxL[None]
    logits = jnp.where(key_mask_BxL[:, None, None, :], logits, jnp.finfo(F32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(cd)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=matmul_precision(cd))
    return self.o(out.reshape(*x_BxLxD.shape[:2], -1))


class GatedFFN(nnx.Module):
  """fc2(fc1(x) * gelu_tanh(gate(x))): HF's wo(wi_1(x) * gelu(wi_0(x)))."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    pd, cd = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    lin = functools.partial(Linear, param_dtype=pd, compute_dtype=cd, rngs=rngs, use_bias=False)
    self.gate = lin(cfg.d_model, cfg.d_ff)
    self.fc1 = lin(cfg.d_model, cfg.d_ff)
    self.fc2 = lin(cfg.d_ff, cfg.d_model)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(self.fc1(x) * jax.nn.gelu(self.gate(x), approximate=True))


class UMT5Block(nnx.Module):
  """Pre-norm self-attention and FFN, each added to the fp32 residual stream."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.eps, param_dtype=pd)
    self.attn = SelfAttention(cfg, rngs=rngs)
    self.position_bias = Embedding(cfg.num_buckets, cfg.num_heads, param_dtype=pd, rngs=rngs)
    self.ffn_norm = RMSNorm(cfg.d_model, cfg.eps, param_dtype=pd)
    self.ffn = GatedFFN(cfg, rngs=rngs)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)

  def __call__(self, x_BxLxD: jax.Array, buckets_LxL: jax.Array,
               key_mask_BxL: jax.Array) -> jax.Array:
    cd = self.compute_dtype
    bias_HxLxL = self.position_bias(buckets_LxL).astype(F32).transpose(2, 0, 1)
    h = self.attn(self.attn_norm(x_BxLxD).astype(cd), bias_HxLxL, key_mask_BxL)
    x = x_BxLxD + h.astype(F32)
    return x + self.ffn(self.ffn_norm(x).astype(cd)).astype(F32)


class UMT5Encoder(nnx.Module):
  """Token embedding, `num_layers` blocks stacked on a leading axis (scanned), final RMSNorm."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.config = cfg
    self.token_embedding = Embedding(cfg.vocab_size, cfg.d_model, param_dtype=pd, rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked_blocks(rngs: nnx.Rngs) -> UMT5Block:
      return UMT5Block(cfg, rngs=rngs)

    self.blocks = stacked_blocks(rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.eps, param_dtype=pd)

  def __call__(self, input_ids_BxL: jax.Array, attention_mask_BxL: jax.Array) -> jax.Array:
    cfg = self.config
    if input_ids_BxL.ndim != 2 or attention_mask_BxL.shape != input_ids_BxL.shape:
      raise ValueError(f"input_ids {input_ids_BxL.shape} and attention_mask "
                       f"{attention_mask_BxL.shape} must both be [B, L]")
    buckets = jnp.asarray(bucket_table(input_ids_BxL.shape[1], cfg.num_buckets, cfg.max_distance))
    key_mask = attention_mask_BxL != 0
    x = self.token_embedding(input_ids_BxL).astype(F32)

    graphdef, layer_states = nnx.split(self.blocks)

    def one_layer(x, layer_state):
      return nnx.merge(graphdef, layer_state)(x, buckets, key_mask), None

    x, _ = jax.lax.scan(one_layer, x, layer_states)
    return self.final_norm(x).astype(F32)


PRESETS = {"umt5_xxl": umt5_xxl, "umt5_tiny": umt5_tiny}

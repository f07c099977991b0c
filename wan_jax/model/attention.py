"""The one attention function every layer calls, with three interchangeable implementations.

- "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention` (NVIDIA GPUs, bf16/fp16).
- "xla": plain softmax(q k^T) v; holds the whole [Lq, Lk] score matrix, so only for short inputs.
- "chunked": flash-style online softmax over key chunks, one query chunk at a time, rematerialised
  per query chunk; memory O(chunk^2) per head, runs on any backend (a 32k-token video on CPU too).
- "auto": cuDNN on a GPU with a 16-bit compute dtype, chunked otherwise.

Shapes are [B, L, H, D] throughout (the layout cuDNN takes without a transpose); softmax
statistics are always fp32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from wan_jax.model.layers import matmul_precision


def resolve_impl(impl: str, dtype: jnp.dtype) -> str:
  if impl != "auto":
    return impl
  return "cudnn" if _cudnn_flash_available() and dtype in (jnp.bfloat16, jnp.float16) else "chunked"


def _cudnn_flash_available() -> bool:
  """An NVIDIA GPU of compute capability 8.0+ (cuDNN flash attention); not ROCm, not older."""
  device = jax.devices()[0]
  if device.platform != "gpu" or "cuda" not in device.client.platform_version.lower():
    return False
  try:
    return float(getattr(device, "compute_capability", "0")) >= 8.0
  except ValueError:
    return False


def attention(q_BxLxHxD: jax.Array, k_BxSxHxD: jax.Array, v_BxSxHxD: jax.Array, *,
              impl: str = "auto", chunk_size: int = 1024) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v without masking; returns [B, L, H, D] in q's dtype."""
  impl = resolve_impl(impl, q_BxLxHxD.dtype)
  if impl == "cudnn":
    if q_BxLxHxD.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError("cuDNN attention needs a bfloat16/float16 compute dtype, got "
                       f"{q_BxLxHxD.dtype}; use attention='chunked' or 'xla' for float32")
    return jax.nn.dot_product_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, implementation="cudnn")
  if impl == "xla":
    return _xla_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD)
  if impl == "chunked":
    return _chunked_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, chunk_size)
  raise ValueError(f"unknown attention implementation {impl!r}")


def _xla_attention(q, k, v):
  prec = matmul_precision(q.dtype)
  scale = 1.0 / math.sqrt(q.shape[-1])
  s_BxHxLxS = jnp.einsum("blhd,bshd->bhls", q, k, precision=prec,
                         preferred_element_type=jnp.float32) * scale
  p = jax.nn.softmax(s_BxHxLxS, axis=-1).astype(v.dtype)
  return jnp.einsum("bhls,bshd->blhd", p, v, precision=prec).astype(q.dtype)


def _pad_to(x: jax.Array, length: int) -> jax.Array:
  pad = length - x.shape[1]
  return x if pad == 0 else jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))


def _chunked_attention(q, k, v, chunk_size: int):
  b, lq, h, d = q.shape
  lk = k.shape[1]
  cq, ck = min(chunk_size, lq), min(chunk_size, lk)
  nq, nk = -(-lq // cq), -(-lk // ck)
  prec = matmul_precision(q.dtype)
  scale = 1.0 / math.sqrt(d)

  q_chunks = _pad_to(q, nq * cq).reshape(b, nq, cq, h, d).swapaxes(0, 1)
  k_chunks = _pad_to(k, nk * ck).reshape(b, nk, ck, h, d).swapaxes(0, 1)
  v_chunks = _pad_to(v, nk * ck).reshape(b, nk, ck, h, d).swapaxes(0, 1)
  # Padded keys are masked out; every key chunk keeps at least one real key, so the running
  # maximum is finite after the first chunk.
  key_valid_NKxCK = (jnp.arange(nk * ck) < lk).reshape(nk, ck)

  def one_query_chunk(q_BxCQxHxD):
    def over_keys(carry, xs):
      m_BxHxCQ, l_BxHxCQ, acc_BxCQxHxD = carry
      k_c, v_c, valid_CK = xs
      s = jnp.einsum("bqhd,bkhd->bhqk", q_BxCQxHxD, k_c, precision=prec,
                     preferred_element_type=jnp.float32) * scale
      s = jnp.where(valid_CK[None, None, None, :], s, -jnp.inf)
      m_new = jnp.maximum(m_BxHxCQ, s.max(axis=-1))
      p = jnp.exp(s - m_new[..., None])
      correction = jnp.exp(m_BxHxCQ - m_new)
      l_new = l_BxHxCQ * correction + p.sum(axis=-1)
      pv = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v_c.dtype), v_c, precision=prec,
                      preferred_element_type=jnp.float32)
      acc_new = acc_BxCQxHxD * correction.swapaxes(1, 2)[..., None] + pv
      return (m_new, l_new, acc_new), None

    init = (jnp.full((b, h, cq), -jnp.inf, jnp.float32), jnp.zeros((b, h, cq), jnp.float32),
            jnp.zeros((b, cq, h, d), jnp.float32))
    # Rematerialising each key step keeps the backward pass at one [cq, ck] score block per
    # head instead of storing every step's scores (which would grow with the key length).
    (_, l, acc), _ = jax.lax.scan(jax.checkpoint(over_keys, prevent_cse=False), init,
                                  (k_chunks, v_chunks, key_valid_NKxCK))
    return (acc / l.swapaxes(1, 2)[..., None]).astype(q.dtype)

  out = jax.lax.map(jax.checkpoint(one_query_chunk), q_chunks)
  return out.swapaxes(0, 1).reshape(b, nq * cq, h, d)[:, :lq]

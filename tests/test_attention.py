"""The attention implementations agree with each other, in values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan_jax.model.attention import attention, resolve_impl


def qkv(lq: int, lk: int, dtype=jnp.float32, seed: int = 0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (2, lq, 3, 8), jnp.float32) * 2
  k = jax.random.normal(ks[1], (2, lk, 3, 8), jnp.float32) * 2
  v = jax.random.normal(ks[2], (2, lk, 3, 8), jnp.float32)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def naive(q, k, v):
  s = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhls,bshd->blhd", p, v)


@pytest.mark.slow
@pytest.mark.parametrize("lq,lk,chunk", [(37, 23, 8), (16, 16, 16), (5, 41, 7), (30, 512, 64)])
def test_chunked_and_xla_match_naive(lq, lk, chunk):
  q, k, v = qkv(lq, lk)
  want = naive(*(np.asarray(a, np.float64) for a in (q, k, v)))
  for impl in ("xla", "chunked"):
    got = attention(q, k, v, impl=impl, chunk_size=chunk)
    assert got.shape == (2, lq, 3, 8)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5, err_msg=impl)


@pytest.mark.slow
def test_chunked_gradients_match_xla():
  q, k, v = qkv(29, 19, seed=1)
  w = jax.random.normal(jax.random.key(9), (2, 29, 3, 8))

  def loss(impl):
    return lambda q, k, v: jnp.sum(attention(q, k, v, impl=impl, chunk_size=6) * w)

  g_xla = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  g_chunked = jax.jit(jax.grad(loss("chunked"), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_xla, g_chunked):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_bf16_inputs_give_bf16_outputs_within_tolerance():
  q, k, v = qkv(40, 40, seed=2)
  want = naive(*(np.asarray(a, np.float64) for a in (q, k, v)))
  got = attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                  impl="chunked", chunk_size=16)
  assert got.dtype == jnp.bfloat16
  err = np.linalg.norm(np.asarray(got, np.float32) - want) / np.linalg.norm(want)
  assert err < 2e-2


def test_cudnn_refuses_float32_with_a_clear_error():
  q, k, v = qkv(4, 4)
  with pytest.raises(ValueError, match="cuDNN attention needs a bfloat16"):
    attention(q, k, v, impl="cudnn")


def test_auto_picks_chunked_off_gpu():
  if jax.default_backend() != "gpu":
    assert resolve_impl("auto", jnp.bfloat16) == "chunked"
  assert resolve_impl("auto", jnp.float32) == "chunked"

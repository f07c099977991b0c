"""Small building blocks: a linear layer with a compute dtype and optional LoRA, and fp32 norms.

Norms always compute in fp32 (the reference does too); linears cast their input and weight to
the compute dtype so the matmul runs in bf16 while parameters may be stored in fp32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.quantize import QUANTIZE, dequantize
from wan_jax.model.quantize import quantize as fp8_quantize


def matmul_precision(compute_dtype: jnp.dtype) -> jax.lax.Precision:
  """Full precision for fp32 compute (no TF32 on GPUs); the fast default otherwise."""
  return jax.lax.Precision.HIGHEST if compute_dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype) -> jax.Array:
  """N(0, std^2) values for an initialiser, from the module's next params key.

  Drawn on the host when the key is concrete: a module has dozens of distinct shapes, and one XLA
  compile of `jax.random.normal` per shape made a tiny VAE take about a minute to build on CPU.
  Traced keys (`nnx.eval_shape`, a vmapped layer stack) draw with JAX.
  """
  key = rngs.params()
  if isinstance(key, jax.core.Tracer):
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * np.float32(std), dtype)


class LoRAParam(nnx.Param):
  """A LoRA adapter weight. Its own type so `nnx.state(model, LoRAParam)` is exactly what LoRA
  training updates, and `nnx.All(nnx.Param, nnx.Not(LoRAParam))` the frozen base."""


class Linear(nnx.Module):
  """y = x @ kernel + bias, kernel stored [in, out] in param_dtype, computed in compute_dtype.

  use_bias=False drops the bias (umT5's linears have none). `add_lora` adds an adapter:
  y = x @ kernel + bias + (x @ A) @ B * alpha / rank, the order peft uses. quantize="fp8" stores
  the kernel as float8_e4m3fn with `kernel_scale` (wan_jax/model/quantize.py), dequantised to the
  compute dtype where it is used.
  """

  def __init__(self, in_features: int, out_features: int, *, param_dtype: jnp.dtype,
               compute_dtype: jnp.dtype, rngs: nnx.Rngs, init_scale: float = 1.0,
               use_bias: bool = True, quantize: str = "none"):
    kernel = normal(rngs, (in_features, out_features),
                    init_scale / math.sqrt(max(in_features, 1)), param_dtype)
    if quantize not in QUANTIZE:
      raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    scale = None
    if quantize == "fp8":
      kernel, scale = fp8_quantize(kernel)
    self.kernel = nnx.Param(kernel)
    self.kernel_scale = nnx.data(None) if scale is None else nnx.Param(scale)
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias
                 else nnx.data(None))
    self.compute_dtype = compute_dtype
    self.lora_alpha: float | None = None  # static: None means no adapter, and no extra cost

  def weight(self, dtype: jnp.dtype) -> jax.Array:
    """The kernel [..., in, out] in `dtype` (dequantised when stored in fp8)."""
    if self.kernel_scale is None:
      return self.kernel[...].astype(dtype)
    return dequantize(self.kernel[...], self.kernel_scale[...], dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    cd = self.compute_dtype
    x = x.astype(cd)
    y = jnp.matmul(x, self.weight(cd), precision=matmul_precision(cd))
    y = y if self.bias is None else y + self.bias[...].astype(cd)
    return y if self.lora_alpha is None else y + self.lora_delta(x)

  def add_lora(self, rank: int, alpha: float, key: jax.Array) -> None:
    """A [..., in, r] uniform in +-1/sqrt(in) (peft's kaiming-uniform bound) and B = 0, so the
    layer is unchanged until B trains. Leading kernel axes (stacked layers) carry over to A and B.

    Both stay fp32 whatever the base dtype: bf16 would round away small optimizer updates.
    """
    *lead, fan_in, fan_out = self.kernel.shape
    bound = 1.0 / math.sqrt(fan_in)
    self.lora_a = LoRAParam(
        jax.random.uniform(key, (*lead, fan_in, rank), jnp.float32, -bound, bound))
    self.lora_b = LoRAParam(jnp.zeros((*lead, rank, fan_out), jnp.float32))
    self.lora_alpha = float(alpha)

  @property
  def lora_rank(self) -> int:
    return self.lora_a.shape[-1]

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank

  def lora_delta(self, x: jax.Array) -> jax.Array:
    """(x A) B * scale in the compute dtype: in fp32 the same operations as peft; in bf16 two
    thin matmuls on the fast path, whose rounding is relative to the small delta, not to y."""
    cd, precision = self.compute_dtype, matmul_precision(self.compute_dtype)
    h = jnp.matmul(x.astype(cd), self.lora_a[...].astype(cd), precision=precision)
    h = jnp.matmul(h, self.lora_b[...].astype(cd), precision=precision)
    return h * jnp.asarray(self.lora_scale, cd)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """LayerNorm without affine, in fp32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
  """Affine LayerNorm in fp32 (the cross-attention input norm, `norm3` in Wan's keys)."""

  def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return (layer_norm(x, self.eps) * self.weight[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32))


class RMSNorm(nnx.Module):
  """RMSNorm over the whole last axis (all heads at once, before the head split), in fp32."""

  def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (xf * self.weight[...].astype(jnp.float32)).astype(x.dtype)

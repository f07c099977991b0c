"""An fp8 base (`model.quantize = "fp8"`): the blocks' frozen linear kernels stored as
float8_e4m3fn with one fp32 scale per group of input rows of each output column, dequantised to
the compute dtype inside the block (one block at a time in the layer scan, resident or streamed).

Granularity: one scale per GROUP = 64 consecutive inputs of each output column (the block size
musubi-tuner's `--fp8_scaled` uses). Measured on real-size random kernels (benchmarks/
fp8_error.py, docs/training.md "An fp8 base"): relative RMS error of the weights and of x W is
2.65% with one scale per tensor, 2.61-2.65% per output column, 2.51% (Gaussian) / 2.30%
(Student-t, 4 degrees of freedom) per 64 inputs, 2.40% / 2.16% per 32. e4m3 is a float format,
so most of its error does not depend on the scale; finer groups help where magnitudes vary
within a column (heavy tails: each group's largest value is exact, fewer values fall into the
subnormal range). 64 takes most of that gain for 4 bytes of scale per 64 weights (6% on top of
the fp8 bytes); 32 gains 0.11-0.14 points more for twice the overhead.
A fan-in that 64 does not divide (the tiny test model) falls back to one scale per column.

Scales map each group's largest magnitude to 448, e4m3's largest finite value; values are
rounded to nearest. Values are multiplied by the scale's reciprocal, not divided by the scale:
XLA's CPU compiler turns a quotient by a broadcast into that product anyway, which differs from
numpy's quotient in the last bit of about a quarter of the values (measured on a 1024x2048
kernel) and so, at an fp8 rounding tie, in the fp8 value; spelt out as a product, `quantize`
and `quantize_numpy` agree bit for bit. LoRA adapters, norms, modulation, embeddings and head are not quantised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FP8 = jnp.float8_e4m3fn
FP8_MAX = 448.0
INV_MAX = np.float32(1.0 / FP8_MAX)  # a product, not a quotient: XLA and numpy round it alike
GROUP = 64
QUANTIZE = ("none", "fp8")


def group_size(fan_in: int, group: int = GROUP) -> int:
  """Inputs per scale: `group` when it divides the fan-in, else the whole column."""
  return group if fan_in % group == 0 else fan_in


def quantize(kernel: jax.Array, group: int | None = None) -> tuple[jax.Array, jax.Array]:
  """kernel [..., in, out] -> (fp8 values [..., in, out], fp32 scales [..., in / group, out])."""
  *lead, fan_in, fan_out = kernel.shape
  g = group_size(fan_in) if group is None else group
  k = jnp.asarray(kernel, jnp.float32).reshape(*lead, fan_in // g, g, fan_out)
  amax = jnp.max(jnp.abs(k), axis=-2)
  scale = jnp.where(amax > 0, amax * INV_MAX, 1.0)
  q = jnp.clip(k * (1.0 / scale)[..., None, :], -FP8_MAX, FP8_MAX).astype(FP8)
  return q.reshape(kernel.shape), scale


def dequantize(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """The kernel [..., in, out] in `dtype` from its fp8 values and scales."""
  *lead, fan_in, fan_out = q.shape
  groups = scale.shape[-2]
  k = q.astype(jnp.float32).reshape(*lead, groups, fan_in // groups, fan_out)
  return (k * scale[..., :, None, :]).reshape(q.shape).astype(dtype)


def quantize_numpy(kernel: np.ndarray, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`quantize` on the host, one array at a time (loading and conversion), the same values.

  One fp32 copy of the kernel is the only temporary (scaled and clipped in place; the largest
  magnitude from max and min, not from an array of absolute values): loading and the converter
  run it on several kernels at once, and each fp32 temporary of a 14B ffn kernel is 270 MiB.
  """
  import ml_dtypes

  *lead, fan_in, fan_out = kernel.shape
  g = group_size(fan_in) if group is None else group
  k = np.array(kernel, np.float32).reshape(*lead, fan_in // g, g, fan_out)  # a copy: changed below
  amax = np.maximum(k.max(axis=-2), -k.min(axis=-2))
  scale = np.where(amax > 0, amax * INV_MAX, np.float32(1.0)).astype(np.float32)
  np.multiply(k, (np.float32(1.0) / scale)[..., None, :], out=k)
  np.clip(k, -FP8_MAX, FP8_MAX, out=k)
  return k.astype(ml_dtypes.float8_e4m3fn).reshape(kernel.shape), scale


def is_fp8(x) -> bool:
  return jnp.dtype(x.dtype) == jnp.dtype(FP8)

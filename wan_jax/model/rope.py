"""3D rotary position embedding, Wan style: interleaved pairs, (t, h, w) channel split per head.

Channel pairs (2i, 2i+1) of each head form one complex number. The first `t` channels rotate
with the frame index, the next `h` with the row, the last `w` with the column; each axis has its
own frequency ladder theta^(-2j/axis_channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _axis_angles(positions: int, channels: int, theta: float) -> np.ndarray:
  """[positions, channels/2] rotation angles in float64 (tables are built once, on the host)."""
  freqs = 1.0 / theta ** (np.arange(0, channels, 2, dtype=np.float64) / channels)
  return np.outer(np.arange(positions, dtype=np.float64), freqs)


def rope_tables(grid: tuple[int, int, int], split: tuple[int, int, int], theta: float,
                max_positions: int) -> tuple[jax.Array, jax.Array]:
  """cos and sin, each [F*H*W, head_dim/2] fp32, tokens ordered f-major then h then w.

  Per-axis tables are exact (float64 on the host, then fp32) and small; the per-token table is
  a broadcast of them made on the device, so no [N, head_dim] constant lands in the program.
  """
  f, h, w = grid
  if max(grid) > max_positions:
    raise ValueError(f"latent grid {grid} exceeds the RoPE table of {max_positions} positions")
  per_axis = [_axis_angles(n, c, theta) for n, c in zip(grid, split)]

  def table(fn) -> jax.Array:
    at, ah, aw = (jnp.asarray(fn(a), jnp.float32) for a in per_axis)
    full = jnp.concatenate([
        jnp.broadcast_to(at[:, None, None, :], (f, h, w, at.shape[1])),
        jnp.broadcast_to(ah[None, :, None, :], (f, h, w, ah.shape[1])),
        jnp.broadcast_to(aw[None, None, :, :], (f, h, w, aw.shape[1])),
    ], axis=-1)
    return full.reshape(f * h * w, -1)

  return table(np.cos), table(np.sin)


def apply_rope(x_BxNxHxD: jax.Array, cos_NxP: jax.Array, sin_NxP: jax.Array) -> jax.Array:
  """Rotates interleaved channel pairs in fp32 and returns x's dtype."""
  b, n, h, d = x_BxNxHxD.shape
  x = x_BxNxHxD.astype(jnp.float32).reshape(b, n, h, d // 2, 2)
  x1, x2 = x[..., 0], x[..., 1]
  cos = cos_NxP[None, :, None, :]
  sin = sin_NxP[None, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(b, n, h, d).astype(x_BxNxHxD.dtype)

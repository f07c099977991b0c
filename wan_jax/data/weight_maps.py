"""Masks -> per-item loss weights on the latent grid.

The VAE turns s x s pixel cells (8 for the A14B's Wan 2.1 VAE, 16 for the TI2V-5B's: the
model's LatentGeometry) into one latent cell and frames [0], [1..4], [5..8], ... into latent
frames 0, 1, 2, ...; the weight of a latent cell is the average of the mask over the pixels it
covers (area pooling: partial coverage gives partial weight), then mapped to [mask_min_value, 1].
"""

from __future__ import annotations

import numpy as np

SPATIAL = 8  # the A14B's defaults
TEMPORAL = 4


def latent_frames(num_frames: int, temporal: int = TEMPORAL) -> int:
  if (num_frames - 1) % temporal:
    raise ValueError(f"frame count {num_frames} is not of the form {temporal}k+1")
  return (num_frames - 1) // temporal + 1


def pool_mask(mask_FxHxW: np.ndarray, num_frames: int, spatial: int = SPATIAL,
              temporal: int = TEMPORAL) -> np.ndarray:
  """Area-average pooling onto [latent frames, H/s, W/s] (s: the VAE's pixels per latent
  cell, 8 or 16; frames grouped `temporal` to a latent frame after the first); one mask frame
  covers every frame."""
  f, h, w = mask_FxHxW.shape
  if h % spatial or w % spatial:
    raise ValueError(f"mask {h}x{w} is not a multiple of {spatial}")
  if f not in (1, num_frames):
    raise ValueError(f"mask has {f} frames for a {num_frames}-frame clip")
  cells = mask_FxHxW.astype(np.float64).reshape(f, h // spatial, spatial, w // spatial, spatial)
  cells = cells.mean(axis=(2, 4))
  if f == 1:
    return np.repeat(cells, latent_frames(num_frames, temporal), axis=0).astype(np.float32)
  first, rest = cells[:1], cells[1:]
  groups = rest.reshape(-1, temporal, *rest.shape[1:]).mean(axis=1)
  return np.concatenate([first, groups]).astype(np.float32)


def weight_map(mask_FxHxW: np.ndarray, num_frames: int, mask_min_value: float = 0.0,
               invert: bool = False, spatial: int = SPATIAL,
               temporal: int = TEMPORAL) -> np.ndarray | None:
  """Weights [F', H/s, W/s] in [mask_min_value, 1]; None when the mask is all black."""
  if not 0.0 <= mask_min_value < 1.0:
    raise ValueError(f"mask_min_value must be in [0, 1), got {mask_min_value}")
  mask = 1.0 - mask_FxHxW if invert else mask_FxHxW
  if not np.any(mask > 0):
    return None
  pooled = pool_mask(np.clip(mask, 0.0, 1.0), num_frames, spatial, temporal)
  return (mask_min_value + (1.0 - mask_min_value) * pooled).astype(np.float32)

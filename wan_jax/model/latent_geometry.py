"""How pixels map onto the latent grid the transformer reads, read off the VAE and the patch.

The Wan 2.1 VAE (the A14B experts') folds 4 frames into one after the first and 8x8 pixels into
one latent pixel of 16 channels; the Wan 2.2 VAE (the TI2V-5B's) folds 4 frames and 16x16
pixels into 48 channels. The transformer then groups 2x2 latent pixels into one token, so a
side must be a multiple of the VAE's stride times the patch (16 or 32 pixels). Every module that
needs one of these numbers asks this object, never restates it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LatentGeometry:
  temporal: int = 4  # pixel frames per latent frame (after frame 0, which stands alone)
  spatial: int = 8  # pixels per latent pixel, along each side
  channels: int = 16  # latent channels
  patch: tuple[int, int] = (2, 2)  # latent pixels per token, (height, width)

  @classmethod
  def of(cls, vae_config: Any, patch_size: tuple[int, int, int] = (1, 2, 2)) -> LatentGeometry:
    """The geometry of a VAE config (temporal_factor, spatial_factor, z_dim) and a transformer
    patch (frames, height, width)."""
    return cls(int(vae_config.temporal_factor), int(vae_config.spatial_factor),
               int(vae_config.z_dim), (int(patch_size[1]), int(patch_size[2])))

  @property
  def side_multiple(self) -> int:
    """Pixels a height or width must be a multiple of: one token's side."""
    return self.spatial * max(self.patch)

  def latent_frames(self, num_frames: int) -> int:
    return (int(num_frames) - 1) // self.temporal + 1

  def frames_ok(self, num_frames: int) -> bool:
    """Frame counts the VAE takes: 1, 1 + t, 1 + 2t, ..."""
    return num_frames >= 1 and (num_frames - 1) % self.temporal == 0

  def snap_frames(self, num_frames: int) -> int:
    """The largest count the VAE takes that is <= num_frames."""
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return (num_frames - 1) // self.temporal * self.temporal + 1

  def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of a clip."""
    return (self.latent_frames(num_frames), int(height) // self.spatial,
            int(width) // self.spatial)

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    return (*self.grid(num_frames, height, width), self.channels)

  def tokens(self, num_frames: int, height: int, width: int) -> int:
    f, h, w = self.grid(num_frames, height, width)
    return f * (h // self.patch[0]) * (w // self.patch[1])


WAN21 = LatentGeometry()  # the A14B experts' (Wan 2.1 VAE, patch 1x2x2)

"""The Wan VAEs' configuration: the Wan 2.1 VAE (also the VAE of both Wan 2.2 A14B experts) and
the Wan 2.2 VAE of TI2V-5B (residual down/up blocks, 2x2 pixel patches, 48 latent channels)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Per-channel statistics of the latents, published with the model: z = (mu - mean) / std.
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# The Wan 2.2 VAE's statistics (Wan-Video/Wan2.2 vae2_2.py, diffusers' conversion script).
LATENTS_MEAN_22 = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667)
LATENTS_STD_22 = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

ARCH_FIELDS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample",
               "latents_mean", "latents_std", "decoder_base_dim", "is_residual", "patch_size")
# The 2.2-only fields, written into arch_dict only when set: a 2.1 manifest stays as it was.
WAN22_DEFAULTS = {"decoder_base_dim": None, "is_residual": False, "patch_size": 1}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture (what a checkpoint fixes) plus runtime choices (dtypes, attention).

  Both VAEs compress 4x in time (frame 0 alone, then groups of 4); in space 2.1 compresses 8x and
  2.2 16x (2x2 pixel patches, then 8x).
  """

  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = LATENTS_MEAN
  latents_std: tuple[float, ...] = LATENTS_STD
  # Wan 2.2: the decoder's own base width (None: base_dim), residual down/up blocks whose
  # shortcuts average / duplicate pixels, and pixels folded into patch_size^2 x 3 channels.
  decoder_base_dim: int | None = None
  is_residual: bool = False
  patch_size: int = 1
  # Runtime: the reference runs in fp32; bf16 halves memory at some cost in accuracy.
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  # Mid-block attention runs over a frame's H/8 x W/8 latent pixels (14,400 at 720x1280): plain
  # softmax up to attention_xla_max_tokens, an online-softmax in chunks beyond.
  attention_xla_max_tokens: int = 4096
  attention_chunk_size: int = 1024

  def __post_init__(self):
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError("temporal_downsample needs one flag per downsampling level "
                       f"({len(self.dim_mult) - 1}), got {self.temporal_downsample}")
    if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
      raise ValueError(f"latents_mean/std need {self.z_dim} values each")
    if self.patch_size < 1:
      raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

  @property
  def temporal_factor(self) -> int:
    """Pixel frames per latent frame (after the first, which stands alone)."""
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_factor(self) -> int:
    """The total pixel stride of a latent pixel, the patchify included (8 for 2.1, 16 for 2.2)."""
    return self.patch_size * 2 ** (len(self.dim_mult) - 1)

  @property
  def latent_channels(self) -> int:
    return self.z_dim

  @property
  def pixel_channels(self) -> int:
    """Channels the encoder sees / the decoder emits: RGB folded with its patch (3 or 12)."""
    return 3 * self.patch_size ** 2

  @property
  def decoder_dim(self) -> int:
    return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

  def arch_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k in ARCH_FIELDS and not (k in WAN22_DEFAULTS and v == WAN22_DEFAULTS[k])}

  @classmethod
  def from_arch_dict(cls, arch: dict[str, Any], **runtime: Any) -> "VAEConfig":
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    return cls(**fields, **runtime)


def wan21_vae(**runtime: Any) -> VAEConfig:
  """The released Wan 2.1 VAE: 127M parameters."""
  return VAEConfig(**runtime)


def tiny_vae(**runtime: Any) -> VAEConfig:
  """Same structure, narrow channels: for tests and the CPU demo."""
  return VAEConfig(base_dim=8, **runtime)


def wan22_vae(**runtime: Any) -> VAEConfig:
  """The released Wan 2.2 VAE (`Wan2.2_VAE.pth`, TI2V-5B): 4x16x16 compression, 48 channels."""
  return VAEConfig(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                   latents_mean=LATENTS_MEAN_22, latents_std=LATENTS_STD_22, **runtime)


def tiny_vae22(**runtime: Any) -> VAEConfig:
  """The 2.2 structure with narrow channels (8 encoder, 12 decoder) and the real 48 latent
  channels (cheap: they live on the 16x smaller latent grid)."""
  return VAEConfig(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, patch_size=2,
                   latents_mean=LATENTS_MEAN_22, latents_std=LATENTS_STD_22, **runtime)

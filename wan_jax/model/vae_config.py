"""The Wan 2.1 VAE's configuration (also the VAE of both Wan 2.2 A14B experts)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Per-channel statistics of the latents, published with the model: z = (mu - mean) / std.
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

ARCH_FIELDS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample",
               "latents_mean", "latents_std")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture (what a checkpoint fixes) plus runtime choices (dtypes, attention).

  The VAE compresses 4x in time (frame 0 alone, then groups of 4) and 8x in space.
  """

  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = LATENTS_MEAN
  latents_std: tuple[float, ...] = LATENTS_STD
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

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  def arch_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items() if k in ARCH_FIELDS}

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

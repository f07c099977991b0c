"""Architecture and runtime settings of one Wan 2.x transformer expert.

A plain dataclass (never an ml_collections config) so the model can be built from a manifest,
a test or a benchmark without the trainer's configuration system.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wan_jax.model.quantize import QUANTIZE
from wan_jax.model.remat import REMAT_PLANS

ATTENTION_IMPLS = ("auto", "cudnn", "xla", "chunked")

# Fields that describe the weights; everything else is a runtime choice.
ARCH_FIELDS = (
    "dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "patch_size", "in_channels",
    "out_channels", "text_dim", "text_len", "eps", "rope_theta", "rope_max_positions",
)


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """One expert of Wan 2.2 A14B (defaults are the real 14B sizes)."""

  dim: int = 5120
  ffn_dim: int = 13824
  freq_dim: int = 256
  num_heads: int = 40
  num_layers: int = 40
  patch_size: tuple[int, int, int] = (1, 2, 2)
  in_channels: int = 16
  out_channels: int = 16
  text_dim: int = 4096
  text_len: int = 512
  eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_max_positions: int = 1024
  # Runtime choices (not part of the weights).
  param_dtype: str = "bfloat16"
  compute_dtype: str = "bfloat16"
  attention: str = "auto"
  attention_chunk_size: int = 1024
  remat: str = "none"
  quantize: str = "none"  # "fp8": the blocks' linear kernels in float8_e4m3fn with scales

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for the 3D RoPE split")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
    if self.remat not in REMAT_PLANS:
      raise ValueError(f"remat must be one of {REMAT_PLANS}, got {self.remat!r}")
    if self.quantize not in QUANTIZE:
      raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
    if self.in_channels < self.out_channels:
      raise ValueError(f"in_channels {self.in_channels} < out_channels {self.out_channels}: the "
                       f"input is the latents, then any conditioning channels")
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def rope_split(self) -> tuple[int, int, int]:
    """Channels of one head given to the (t, h, w) axes: h = w = 2 * (head_dim // 6)."""
    hw = 2 * (self.head_dim // 6)
    return (self.head_dim - 2 * hw, hw, hw)

  @property
  def condition_channels(self) -> int:
    """Channels of the conditioning input joined after the latents: 0 for text-to-video, 20
    for image-to-video (4 mask channels, then the 16 latents of the conditioning video)."""
    return self.in_channels - self.out_channels

  @property
  def patch_volume(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw

  def replace(self, **changes: Any) -> "WanConfig":
    return dataclasses.replace(self, **changes)

  def arch_dict(self) -> dict[str, Any]:
    """The fields that describe the weights, JSON-ready (stored in converted checkpoints)."""
    d = {k: getattr(self, k) for k in ARCH_FIELDS}
    d["patch_size"] = list(self.patch_size)
    return d

  @classmethod
  def from_arch_dict(cls, d: dict[str, Any], **runtime: Any) -> "WanConfig":
    unknown = set(d) - set(ARCH_FIELDS)
    if unknown:
      raise ValueError(f"unknown WanConfig fields: {sorted(unknown)}")
    return cls(**{**d, **runtime})


def t2v_a14b(**runtime: Any) -> WanConfig:
  """One expert of Wan 2.2 T2V-A14B (also Wan 2.1 T2V-14B): 14.29B parameters."""
  return WanConfig(**runtime)


def i2v_a14b(**runtime: Any) -> WanConfig:
  """One expert of Wan 2.2 I2V-A14B: T2V's sizes with a patch embedding over 36 channels (16
  noisy latents, 4 mask channels, 16 latents of the conditioning video); no image encoder."""
  return WanConfig(**{"in_channels": 16 + I2V_CONDITION_CHANNELS, **runtime})


def ti2v_5b(**runtime: Any) -> WanConfig:
  """Wan 2.2 TI2V-5B, one transformer (no experts): 48 channels in and out (the Wan 2.2 VAE's
  latents; the conditioning image replaces the first latent frame, no extra channels), head_dim
  128, text, eps and RoPE as A14B (Wan2.2 wan/configs/wan_ti2v_5B.py; config.json model_type
  "ti2v", in_dim = out_dim = 48). 4,999,787,712 parameters."""
  arch = dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48,
              out_channels=48)
  return WanConfig(**{**arch, **runtime})


def tiny(**runtime: Any) -> WanConfig:
  """A few-layer model for tests and the CPU demo; head_dim 16 splits 8/4/4 like 44/42/42."""
  arch = dict(dim=64, ffn_dim=96, freq_dim=32, num_heads=4, num_layers=2, text_dim=48,
              text_len=24)
  return WanConfig(**{**arch, "param_dtype": "float32", "compute_dtype": "float32", **runtime})


def tiny_i2v(**runtime: Any) -> WanConfig:
  """The tiny model taking the image-to-video condition."""
  return tiny(**{"in_channels": 16 + I2V_CONDITION_CHANNELS, **runtime})


def tiny_ti2v(**runtime: Any) -> WanConfig:
  """The tiny model with TI2V-5B's 48 channels in and out."""
  return tiny(**{"in_channels": 48, "out_channels": 48, **runtime})


I2V_CONDITION_CHANNELS = 20  # 4 mask channels (one per frame of a latent frame), 16 latents
PRESETS = {"t2v_a14b": t2v_a14b, "i2v_a14b": i2v_a14b, "ti2v_5b": ti2v_5b, "tiny": tiny,
           "tiny_i2v": tiny_i2v, "tiny_ti2v": tiny_ti2v}

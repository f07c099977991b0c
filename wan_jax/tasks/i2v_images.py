"""How a still image trains image-to-video, as ai-toolkit's `wan22_14b_i2v` trains it (read from
its `wan22_14b_i2v_model.py`, 2026). Three ways, settings under `image_i2v` in the config with
ai-toolkit's `model_kwargs.image_i2v_*` names and defaults:

  empty      (default) the one-frame item trains with an empty condition: mask and latent
             channels zero, the state the I2V experts see without a start image.
  degraded   `conditioning`: with probability `conditioning_prob` (0.2) a row conditions on a
             degraded copy of its own image (a light blur, brightness and contrast within 10%,
             Gaussian noise of 0.025), so the condition helps without being copied exactly.
  clip       `clip_training`: with probability `clip_training_prob` (0.25) a batch of images
             trains as clean static clips of `clip_num_frames` (4k+1, default 5) frames, each
             conditioned on its image downscaled by `clip_downscale_factor` (1/16), scaled back
             and blurred with sigma `clip_blur_sigma` (24): the motion-free clip teaches the
             expert to hold a scene, the ruined start frame keeps it from copying.
As in ai-toolkit, with `clip_training` on, images not drawn as clips train with the empty
condition (the degraded one is not used).

What is cached and what is drawn (docs/training.md, "Still images"): training reads caches, not
pixels, so every condition must be encoded before the run. The static clip's latents and its
condition are deterministic (a function of the image), so they are cached once, beside the
image's latents. The degradation is random in ai-toolkit (noise and two factors per draw);
encoding it per step would keep the VAE in the step. Instead each image caches
`conditioning_variants` (4) degraded copies, each drawn from a generator seeded by its own cache
key (the same file for the same image and settings, whatever the run's seed); which copy a row
uses, and whether it uses one, is drawn per row from (seed, batch, row), and whether a batch is
a clip from (seed, batch), so a resumed run draws exactly what the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

# ai-toolkit's degradation (`degrade_image_i2v_conditioning`): torchvision's functional
# gaussian_blur with kernel [3, 3] and sigma [0.1, 1.0], which that function reads as
# (sigma_x, sigma_y), not as a range; then brightness and contrast in [0.9, 1.1]; noise 0.025.
DEGRADE_KERNEL = 3
DEGRADE_SIGMA_XY = (0.1, 1.0)
DEGRADE_FACTOR_RANGE = (0.9, 1.1)
DEGRADE_NOISE = 0.025
DEGRADE_VERSION = 1  # part of the degraded copies' cache keys: bump when the recipe changes


@dataclasses.dataclass(frozen=True)
class ImageTraining:
  """The `image_i2v` settings, checked."""

  conditioning: bool = False
  conditioning_prob: float = 0.2
  conditioning_variants: int = 4
  clip_training: bool = False
  clip_training_prob: float = 0.25
  clip_num_frames: int = 5
  clip_blur_sigma: float = 24.0
  clip_downscale_factor: float = 0.0625

  def __post_init__(self):
    for name in ("conditioning_prob", "clip_training_prob", "clip_downscale_factor"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"image_i2v.{name} must be in [0, 1], got {getattr(self, name)}")
    if self.conditioning_variants < 1:
      raise ValueError("image_i2v.conditioning_variants must be >= 1, got "
                       f"{self.conditioning_variants}")
    if self.clip_num_frames < 5 or self.clip_num_frames % 4 != 1:
      raise ValueError(f"image_i2v.clip_num_frames must be 4k+1 >= 5 (a clip), got "
                       f"{self.clip_num_frames}")
    if self.clip_blur_sigma < 0:
      raise ValueError(f"image_i2v.clip_blur_sigma must be >= 0, got {self.clip_blur_sigma}")

  @property
  def degraded_copies(self) -> int:
    """Degraded conditions cached per image (0: none is used)."""
    return self.conditioning_variants if self.conditioning and not self.clip_training else 0

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> ImageTraining:
    """The settings from the config's `image_i2v` section; a wrong type is one line naming it."""
    values = {}
    for field in dataclasses.fields(cls):
      value = section.get(field.name, field.default)
      kind = {"bool": bool, "int": int, "float": float}[field.type]
      ok = (isinstance(value, bool) if kind is bool else
            isinstance(value, int) and not isinstance(value, bool) if kind is int else
            isinstance(value, (int, float)) and not isinstance(value, bool))
      if not ok:
        want = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
        raise ValueError(f"image_i2v.{field.name} must be {want}, got {value!r}")
      values[field.name] = kind(value)
    unknown = sorted(set(section.keys()) - set(values))
    if unknown:
      raise ValueError(f"image_i2v.{unknown[0]} is not a setting; known: {', '.join(values)}")
    return cls(**values)

  def describe(self) -> str:
    """One line for the data summary."""
    return "images train image-to-video with " + self.ways()

  def ways(self) -> str:
    """How images train: 'an empty condition, or ...'."""
    ways = ["an empty condition"]
    if self.degraded_copies:
      ways.append(f"a degraded copy of itself ({self.conditioning_prob:.0%} of rows, "
                  f"{self.degraded_copies} cached copies)")
    if self.clip_training:
      ways.append(f"a static {self.clip_num_frames}-frame clip on a blurred copy "
                  f"({self.clip_training_prob:.0%} of batches)")
    return ", or ".join(ways)


def image_training(cfg: ml_collections.ConfigDict, conditions_on_pixels: bool
                   ) -> ImageTraining | None:
  """The run's settings for still images (None when the task does not condition on pixels);
  a config without the section gets ai-toolkit's defaults. Turning an option on for a
  text-to-video run is refused: it would be silently ignored."""
  section = cfg.get("image_i2v")
  if not conditions_on_pixels:
    if section is not None and (section.get("conditioning") or section.get("clip_training")):
      raise ValueError("image_i2v.conditioning / image_i2v.clip_training apply to image-to-video "
                       f"runs (model.arch {cfg.model.arch!r} trains text-to-video); turn them off")
    return None
  return ImageTraining() if section is None else ImageTraining.from_config(section)


def image_i2v_config() -> ml_collections.ConfigDict:
  """The config section with ai-toolkit's defaults (`model_kwargs.image_i2v_*`)."""
  defaults = ImageTraining()
  return ml_collections.ConfigDict(dataclasses.asdict(defaults))


def nearest_clip_frames(value: Any) -> int:
  """ai-toolkit's rounding of `image_i2v_clip_num_frames` to 4k+1, (n // 4) * 4 + 1 (at least 5
  here: a one-frame 'clip' would be the image again)."""
  frames = max(1, int(value))
  return max(5, frames // 4 * 4 + 1)


# -- the pixel recipes (float32 [H, W, 3] in [-1, 1]) ---------------------------------------------
def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """torchvision's kernel: a sampled Gaussian over the centred integer offsets, normalised."""
  x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def _blur_axis(image: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
  """One separable pass with reflect padding (torch's 'reflect': the edge is not repeated)."""
  pad = len(taps) // 2
  if pad == 0:
    return image
  widths = [(0, 0)] * image.ndim
  widths[axis] = (pad, pad)
  padded = np.pad(image, widths, mode="reflect")
  n = image.shape[axis]
  out = np.zeros_like(image)
  for k, t in enumerate(taps):
    out += t * np.take(padded, np.arange(k, k + n), axis=axis)
  return out


def gaussian_blur(image: np.ndarray, kernel_hw: tuple[int, int],
                  sigma_xy: tuple[float, float]) -> np.ndarray:
  """torchvision.transforms.functional.gaussian_blur of an [H, W, C] image."""
  out = _blur_axis(image, _gaussian_taps(kernel_hw[0], sigma_xy[1]), axis=0)
  return _blur_axis(out, _gaussian_taps(kernel_hw[1], sigma_xy[0]), axis=1)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """torch's F.interpolate(mode='bilinear', align_corners=False) of an [H, W, C] image: sample
  points at half-pixel centres, no antialiasing (a 16x downscale samples, it does not average)."""
  def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

  y0, y1, fy = taps(image.shape[0], height)
  x0, x1, fx = taps(image.shape[1], width)
  rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """ai-toolkit's degraded condition: blur, brightness, contrast about each channel's mean,
  noise, clamped to [-1, 1]."""
  out = image.astype(np.float32)
  if min(out.shape[:2]) >= DEGRADE_KERNEL:
    out = gaussian_blur(out, (DEGRADE_KERNEL, DEGRADE_KERNEL), DEGRADE_SIGMA_XY)
  brightness, contrast = rng.uniform(*DEGRADE_FACTOR_RANGE, size=2)
  out = out * np.float32(brightness)
  mean = out.mean(axis=(0, 1), keepdims=True)
  out = (out - mean) * np.float32(contrast) + mean
  out = out + rng.standard_normal(out.shape, np.float32) * np.float32(DEGRADE_NOISE)
  return np.clip(out, -1.0, 1.0)


def _blur_kernel_size(length: int, sigma: float) -> int:
  """ai-toolkit's kernel for a large sigma: about 6 sigma, odd, at most the side (odd)."""
  if length < 3 or sigma <= 0:
    return 1
  desired = int(round(sigma * 6.0))
  desired = max(3, desired + 1 if desired % 2 == 0 else desired)
  return max(1, min(desired, length if length % 2 else length - 1))


def clip_condition_frame(image: np.ndarray, blur_sigma: float,
                         downscale_factor: float) -> np.ndarray:
  """The static clip's start frame: downscaled, scaled back (bilinear) and blurred, so the
  expert cannot copy its clip from it."""
  out = image.astype(np.float32)
  height, width = out.shape[:2]
  if 0.0 < downscale_factor < 1.0:
    small = (max(1, int(round(height * downscale_factor))),
             max(1, int(round(width * downscale_factor))))
    out = resize_bilinear(resize_bilinear(out, *small), height, width)
  kh, kw = _blur_kernel_size(height, blur_sigma), _blur_kernel_size(width, blur_sigma)
  if kh >= 3 and kw >= 3:
    out = gaussian_blur(out, (kh, kw), (blur_sigma, blur_sigma))
  return np.clip(out, -1.0, 1.0)


def seed_of_key(key: str) -> int:
  """A generator seed from a cache key (hex digest): each degraded copy is reproducible."""
  return int(key[:16], 16) if key else 0

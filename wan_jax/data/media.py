"""Decoding images, videos and masks into numpy arrays, with errors that name the file.

Images go through Pillow (EXIF orientation applied, 16-bit scaled to 8-bit, any mode to RGB);
videos through PyAV, wan_jax.video (a real FFmpeg decoder: mp4, webm, mov, gif). Pixels come
back uint8 [F, H, W, 3]; masks float32 [F, H, W] in [0, 1] (white = train, black = ignore).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".gif")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # what Pillow's "L" conversion uses
WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class MediaError(ValueError):
  """A file that cannot be used; the message starts with its path."""


def is_image(path: Path) -> bool:
  return path.suffix.lower() in IMAGE_EXTS


def is_video(path: Path) -> bool:
  return path.suffix.lower() in VIDEO_EXTS


def natural_key(path: Path) -> list:
  """Sort key that puts frame 2 before frame 10 ("2.png" < "10.png")."""
  return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What bucketing, frame selection and mask checks need."""

  width: int
  height: int
  frames: int  # decodable frames (1 for images)
  fps: float | None  # frames / duration for videos; None for images
  any_nonzero: bool = True  # False for an all-black frame set (used for masks)
  any_below_white: bool = True  # False for an all-white frame set (an inverted mask's black)
  alpha: str = "none"  # images: "none", "empty" (fully transparent), "partial", "opaque"


def _open_image(path: Path) -> Image.Image:
  """Fully decoded (a truncated file fails here, not mid-run), EXIF-rotated, 8-bit."""
  try:
    img = Image.open(path)
    img.load()
    img = ImageOps.exif_transpose(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f"{path}: cannot decode image ({e})") from e
  if img.mode in WIDE_INT_MODES:  # 16-bit PNGs: scale, do not clip, to 8 bits
    wide = np.asarray(img, np.float64)
    img = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L")
  return img


def _video_frames(path: Path):
  from wan_jax import video
  return video.frames(path)


def probe(path: Path) -> MediaInfo:
  """Size (after EXIF rotation) and frames, found by decoding the file once, completely.

  Container frame counts and rates are often wrong (truncated uploads, variable frame rates,
  webm without counts), so videos are counted by decoding and their rate is frames / duration.
  """
  if is_image(path):
    img = _open_image(path)
    gray = np.asarray(img.convert("L"))
    alpha = "none"
    if has_alpha(img):
      a = np.asarray(img.convert("RGBA"))[..., 3]
      alpha = "empty" if not a.any() else "opaque" if (a == 255).all() else "partial"
    return MediaInfo(img.width, img.height, 1, None, bool(gray.any()), bool((gray < 255).any()),
                     alpha)
  from wan_jax import video
  frames, height, width, nonzero, below_white = 0, 0, 0, False, False
  try:
    stated_fps, duration = video.rate_and_duration(path)
    for frame in _video_frames(path):
      if frames == 0:
        height, width = frame.shape[:2]
      nonzero = nonzero or bool(frame.any())
      below_white = below_white or bool((frame < 255).any())
      frames += 1
  except Exception as e:  # PyAV raises many types for broken files
    raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
  if frames == 0:
    raise MediaError(f"{path}: video has no frames")
  fps = frames / duration if duration else stated_fps
  return MediaInfo(width, height, frames, fps, nonzero, below_white)


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
  """(RGB uint8 [1, H, W, 3], alpha float32 [1, H, W] or None)."""
  img = _open_image(path)
  alpha = None
  if has_alpha(img):
    alpha = np.asarray(img.convert("RGBA"), np.float32)[None, ..., 3] / 255.0
  return np.asarray(img.convert("RGB"))[None], alpha


def has_alpha(img: Image.Image) -> bool:
  return "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)


def read_video(path: Path, indices: Sequence[int]) -> np.ndarray:
  """The frames at `indices` (any order, repeats allowed) as RGB uint8 [len, H, W, 3]."""
  wanted = set(indices)
  if not wanted:
    raise ValueError("no frames requested")
  last = max(wanted)
  got: dict[int, np.ndarray] = {}
  try:
    for i, frame in enumerate(_video_frames(path)):
      if i in wanted:
        got[i] = frame
      if i >= last:
        break
  except Exception as e:
    raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
  if last not in got:
    raise MediaError(f"{path}: video ended after {len(got)} of the needed frames")
  return np.stack([got[i] for i in indices])


def mask_frames(path: Path) -> list[Path]:
  """The per-frame mask images of a mask folder, in natural order (2.png before 10.png)."""
  return sorted((p for p in path.iterdir() if is_image(p)), key=natural_key)


def probe_mask(path: Path, probe_fn=probe) -> MediaInfo:
  """Size, frame count and whether anything is white, for an image, video or folder mask."""
  if not path.is_dir():
    return probe_fn(path)
  files = mask_frames(path)
  if not files:
    raise MediaError(f"{path}: mask folder holds no images")
  infos = [probe_fn(f) for f in files]
  sizes = {(i.width, i.height) for i in infos}
  if len(sizes) > 1:
    raise MediaError(f"{path}: per-frame masks have different sizes {sorted(sizes)}")
  return MediaInfo(infos[0].width, infos[0].height, len(files), None,
                   any(i.any_nonzero for i in infos), any(i.any_below_white for i in infos))


def read_mask(path: Path, indices: Sequence[int] | None) -> np.ndarray:
  """A mask as float32 [F, H, W] in [0, 1].

  An image mask is one frame (it applies to every frame of a clip); a mask video, or a folder of
  per-frame mask images in natural order, gives the frames at `indices` (frame 0 when None).
  """
  picks = list(indices) if indices is not None else [0]
  if path.is_dir():
    files = mask_frames(path)
    if not files or max(picks) >= len(files):
      raise MediaError(f"{path}: {len(files)} per-frame masks, but frame {max(picks)} is needed")
    return np.stack([_gray(_open_image(files[i])) for i in picks])
  if is_video(path):
    return read_video(path, picks).astype(np.float32) @ LUMA / 255.0
  return _gray(_open_image(path))[None]


def _gray(img: Image.Image) -> np.ndarray:
  return np.asarray(img.convert("L"), np.float32) / 255.0

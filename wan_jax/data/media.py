"""Decoding images, videos and masks into numpy arrays, with errors that name the file.

Images go through Pillow (EXIF orientation applied, any mode to RGB); videos through imageio's
PyAV plugin (a real FFmpeg decoder: mp4, webm, mov, gif). Pixels come back uint8 [F, H, W, 3];
masks float32 [F, H, W] in [0, 1] (white = train, black = ignore, grey = partial).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".gif")


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # what Pillow's "L" conversion uses


class MediaError(ValueError):
  """A file that cannot be used; the message starts with its path."""


def is_image(path: Path) -> bool:
  return path.suffix.lower() in IMAGE_EXTS


def is_video(path: Path) -> bool:
  return path.suffix.lower() in VIDEO_EXTS


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What bucketing and frame selection need, read without decoding a whole clip."""

  width: int
  height: int
  frames: int  # 1 for images
  fps: float | None  # None for images


def _open_image(path: Path) -> Image.Image:
  try:
    img = Image.open(path)
    img.load()  # decodes fully: a truncated file fails here, not mid-run
    return ImageOps.exif_transpose(img)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f"{path}: cannot decode image ({e})") from e


def probe(path: Path) -> MediaInfo:
  """Size (after EXIF rotation), frame count and fps; fully decodes images, probes videos."""
  if is_image(path):
    img = _open_image(path)
    return MediaInfo(img.width, img.height, 1, None)
  import imageio.v3 as iio
  try:
    props = iio.improps(path, plugin="pyav")
    meta = iio.immeta(path, plugin="pyav")
    frames = props.shape[0]
    if frames == 0:  # some containers (webm) do not store a frame count
      frames = sum(1 for _ in iio.imiter(path, plugin="pyav"))
  except Exception as e:  # PyAV raises many types for broken files
    raise MediaError(f"{path}: cannot decode video ({e})") from e
  if frames == 0:
    raise MediaError(f"{path}: video has no frames")
  _, height, width = props.shape[:3]
  return MediaInfo(width, height, frames, float(meta.get("fps") or 0) or None)


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
  """(RGB uint8 [1, H, W, 3], alpha float32 [1, H, W] or None)."""
  img = _open_image(path)
  alpha = None
  if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba, np.float32)[None, ..., 3] / 255.0
  return np.asarray(img.convert("RGB"))[None], alpha


def read_video(path: Path, indices: Sequence[int]) -> np.ndarray:
  """The frames at `indices` (sorted or not, repeats allowed) as RGB uint8 [len, H, W, 3]."""
  import imageio.v3 as iio
  wanted = sorted(set(indices))
  if not wanted:
    raise ValueError("no frames requested")
  got: dict[int, np.ndarray] = {}
  try:
    for i, frame in enumerate(iio.imiter(path, plugin="pyav", format="rgb24")):
      if i in wanted:
        got[i] = frame
      if i >= wanted[-1]:
        break
  except Exception as e:
    raise MediaError(f"{path}: cannot decode video ({e})") from e
  missing = [i for i in wanted if i not in got]
  if missing:
    raise MediaError(f"{path}: video ended before frame {missing[0]} ({len(got)} decoded)")
  return np.stack([got[i] for i in indices])


def read_mask(path: Path, indices: Sequence[int] | None) -> np.ndarray:
  """A mask as float32 [F, H, W] in [0, 1].

  An image mask is one frame (it applies to every frame of a clip); a mask video, or a folder of
  per-frame mask images sorted by name, gives the frames at `indices` of the clip.
  """
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if is_image(p))
    if not files:
      raise MediaError(f"{path}: mask folder holds no images")
    picks = indices if indices is not None else range(len(files))
    if max(picks) >= len(files):
      raise MediaError(f"{path}: {len(files)} per-frame masks, but frame {max(picks)} is needed")
    return np.stack([_gray(_open_image(files[i])) for i in picks])
  if is_video(path):
    frames = read_video(path, indices if indices is not None else [0])
    return frames.astype(np.float32) @ LUMA / 255.0
  return _gray(_open_image(path))[None]


def _gray(img: Image.Image) -> np.ndarray:
  return np.asarray(img.convert("L"), np.float32) / 255.0

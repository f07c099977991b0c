"""Writing previews to disk: MP4 through PyAV (wan_jax.video), PNG through pillow, atomically.

Every writer renders into a hidden temporary file beside the target and renames it into place,
so a viewer watching the folder (or a crash mid-write) never sees half a file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import av
import numpy as np
from PIL import Image

from wan_jax import video
from wan_jax.files import atomic_path

FPS = 16  # Wan 2.2 A14B renders at 16 frames per second (a variant's own: preview.fps)
# H.264 plays everywhere; MPEG-4 part 2 is the fallback an FFmpeg build without x264 still has.
VIDEO_CODECS = ("libx264", "h264", "mpeg4")
_working_codec: str | None = None


def write_text(text: str, path: Path) -> Path:
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")
  return Path(path)


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats (the VAE's range) -> uint8, rounding to the nearest level."""
  x = (np.clip(np.asarray(video, np.float32), -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)


def _even(frames_FxHxWx3: np.ndarray) -> np.ndarray:
  """Edge-pads to even height and width: yuv420p stores chroma at half resolution."""
  _, h, w, _ = frames_FxHxWx3.shape
  if h % 2 or w % 2:
    frames_FxHxWx3 = np.pad(frames_FxHxWx3, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  return frames_FxHxWx3


def _codecs() -> list[str]:
  """The encoders this FFmpeg build has, the last one that worked first."""
  names = [_working_codec] if _working_codec else []
  for name in VIDEO_CODECS:
    with contextlib.suppress(ValueError):  # not in this build
      av.Codec(name, "w")
      names.append(name)
  return list(dict.fromkeys(names))


def write_video(frames_FxHxWx3: np.ndarray, path: Path, *, fps: int = FPS) -> Path:
  """uint8 RGB frames -> an MP4 (H.264 if this FFmpeg can, else MPEG-4 part 2), yuv420p."""
  global _working_codec
  frames = np.asarray(frames_FxHxWx3)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"need uint8 frames [F>=1, H, W, 3], got {frames.dtype} {frames.shape}")
  frames = _even(frames)
  errors = []
  for codec in _codecs():
    try:
      with atomic_path(path) as tmp:
        video.write(frames, tmp, fps=fps, codec=codec)
      _working_codec = codec
      return Path(path)
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:  # try the next one
      errors.append(f"{codec}: {e}")
  raise RuntimeError(f"no video encoder could write {path}: " + "; ".join(errors))


def write_png(frame_HxWx3: np.ndarray, path: Path) -> Path:
  frame = np.asarray(frame_HxWx3)
  if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
    raise ValueError(f"need a uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
  return save_image(Image.fromarray(frame, "RGB"), path)


def save_image(image: Image.Image, path: Path) -> Path:
  with atomic_path(path) as tmp:
    image.save(tmp, format="PNG")
  return Path(path)

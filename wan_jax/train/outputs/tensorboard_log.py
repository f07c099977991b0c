"""TensorBoard event files under <workdir>/tensorboard/, written by tensorboardX.

Why tensorboardX and not the tensorboard package's own writer: tensorboard's framework-free
`tensorboard.summary.Writer` is marked experimental and writes scalars only, so images and text
would mean building its protocol buffers by hand; tensorboardX's `SummaryWriter` is the
maintained, documented writer for scalars, images and text outside TensorFlow, and installs
light (numpy, protobuf, packaging) where tensorboard brings grpcio, werkzeug and markdown. The
viewer (`pip install tensorboard`) reads its files as its own.

A preview clip becomes an animated GIF in the images dashboard, the way TensorBoard shows video
(tensorboardX's `add_video` does the same, through moviepy; here pillow encodes the GIF from the
MP4 the preview already wrote). A one-frame preview is an image.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any
from pathlib import Path

import numpy as np
from PIL import Image

from wan_jax import video

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif")
DEFAULT_FPS = 16.0


def read_frames(path: Path) -> tuple[np.ndarray, float]:
  """(uint8 frames [F, H, W, 3], frames per second) of a preview file (a video or an image)."""
  path = Path(path)
  if path.suffix.lower() in VIDEO_SUFFIXES:
    frames = np.stack(list(video.frames(path)))
    fps = video.rate_and_duration(path)[0] or DEFAULT_FPS
  else:
    with Image.open(path) as im:
      frames, fps = np.asarray(im.convert("RGB"))[None], DEFAULT_FPS
  if frames.ndim == 3:  # one frame read as [H, W, 3]
    frames = frames[None]
  return frames[..., :3].astype(np.uint8), fps


def gif_bytes(frames_FxHxWx3: np.ndarray, fps: float) -> bytes:
  """An endlessly looping animated GIF of the frames, encoded by pillow."""
  images = [Image.fromarray(f, "RGB") for f in np.asarray(frames_FxHxWx3, np.uint8)]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                 duration=max(1, round(1000 / fps)), loop=0)
  return buffer.getvalue()


class TensorBoardLog:
  """One event file per run (a resumed run adds one). Opened at the first event: its step is
  the run's first, and TensorBoard hides events of earlier runs at or after it (purge_step),
  so a run resumed from an older checkpoint shows each step once."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = Path(logdir)
    self._writer = None

  def _open(self, step: int):
    if self._writer is None:
      from tensorboardX import (
        SummaryWriter,  # imported when used: it pulls in torch if present
      )
      self.logdir.mkdir(parents=True, exist_ok=True)
      # The name's time has whole seconds: the suffix keeps two runs of one second apart, and
      # in order (the viewer reads the files sorted by name).
      suffix = f".{time.time_ns() % 10**9:09d}.{os.getpid()}"
      self._writer = SummaryWriter(str(self.logdir), purge_step=step, flush_secs=30,
                                   filename_suffix=suffix)
    return self._writer

  def row(self, step: int, row: dict[str, Any], scalars: dict[str, float]) -> None:
    self.scalars(step, scalars)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    writer = self._open(step)
    for tag, value in values.items():
      writer.add_scalar(tag, float(value), step)
    writer.flush()

  def text(self, step: int, tag: str, markdown: str) -> None:
    writer = self._open(step)
    writer.add_text(tag, markdown, step)
    writer.flush()

  def media(self, step: int, tag: str, path: Path, caption: str = "") -> None:
    """A preview file at its step: one frame as an image, several as an animated GIF."""
    frames, fps = read_frames(path)
    writer = self._open(step)
    if len(frames) == 1:
      writer.add_image(tag, frames[0], step, dataformats="HWC")
    else:
      from tensorboardX.proto.summary_pb2 import Summary
      _, h, w, c = frames.shape
      image = Summary.Image(height=h, width=w, colorspace=c,
                            encoded_image_string=gif_bytes(frames, fps))
      writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()

  def close(self, failed: bool = False) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

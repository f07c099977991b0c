"""Video files through PyAV (FFmpeg) directly: decoding to RGB frames, a stream's rate and
duration, and encoding RGB frames to yuv420p.

Not through imageio's pyav plugin, which runs a full `gc.collect()` every time it closes a file
(for filter graphs we never use): with JAX's objects in the heap that took ~0.46 s per file in
a training process, paid by every clip decoded for the caches, every preview written and every
preview read back for TensorBoard.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frames(path: str | Path) -> Iterator[np.ndarray]:
  """The first video stream's frames, in order, as RGB uint8 [H, W, 3]."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # as imageio's plugin decoded (the frames do not depend on it)
    for frame in container.decode(stream):
      yield frame.to_ndarray(format="rgb24")


def rate_and_duration(path: str | Path) -> tuple[float | None, float | None]:
  """(frames per second as the stream states it, the stream's duration in seconds); None for
  what the file does not say."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    rate = stream.guessed_rate or stream.average_rate
    duration = (float(stream.duration * stream.time_base)
                if stream.duration is not None and stream.time_base is not None else None)
    return (float(rate) if rate else None), duration


def write(frames_FxHxWx3: np.ndarray, path: str | Path, *, fps: int, codec: str) -> None:
  """uint8 RGB frames (even height and width) -> a yuv420p video with `codec`."""
  frames_ = np.asarray(frames_FxHxWx3)
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=Fraction(fps))
    stream.height, stream.width = frames_.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for rgb in frames_:
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():  # flush the encoder
      container.mux(packet)

"""Which source frames a clip contributes: counts of the form 4k+1, evenly spread or a window.

Policy for short clips: a clip with fewer frames than `num_frames` is skipped with a warning
(repeating frames would teach the model to stand still). In "window" mode a clip long enough in
frames but too short for a window at the target fps falls back to evenly spread frames, with a
warning, since its motion then plays faster than `fps`; a clip recorded below the target fps uses
consecutive frames (never duplicates), with a warning, since its motion then plays slower.
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("evenly", "window")


class ClipTooShort(ValueError):
  pass


def select_frames(total: int, num_frames: int, selection: str, source_fps: float | None,
                  fps: float | None, rng: np.random.Generator) -> tuple[list[int], str | None]:
  """(frame indices, warning or None). Raises ClipTooShort when the clip cannot supply them."""
  if selection not in SELECTIONS:
    raise ValueError(f"frame selection must be one of {SELECTIONS}, got {selection!r}")
  if total < num_frames:
    raise ClipTooShort(f"{total} frames, fewer than num_frames={num_frames}")
  if num_frames == 1:
    return [int(rng.integers(total)) if selection == "window" else 0], None
  if selection == "window":
    step = (source_fps / fps) if source_fps and fps else 1.0
    low_rate = step < 1.0
    step = max(step, 1.0)
    span = int(np.floor((num_frames - 1) * step)) + 1
    if span <= total:
      start = int(rng.integers(total - span + 1))
      note = (f"recorded at {source_fps:g} fps, below the target {fps:g} fps; using consecutive "
              "frames" if low_rate else None)
      return [start + int(np.floor(i * step)) for i in range(num_frames)], note
    warning = (f"{total} frames at {source_fps:g} fps is shorter than a {num_frames}-frame window "
               f"at {fps:g} fps; using frames spread over the whole clip")
  else:
    warning = None
  return [int(i) for i in np.linspace(0, total - 1, num_frames).round()], warning

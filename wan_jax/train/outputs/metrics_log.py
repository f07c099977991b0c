"""metrics.jsonl: one JSON object per logged step, appended one whole line at a time.

A run killed mid-write can leave a partial last line; that would make every later run fail when
it reads the file back for the loss plot. Each row is written by a single `write` on a file
opened for appending (so lines never interleave or split), a torn last line found at start is cut
off with a warning, and a line that still fails to parse is skipped by name when read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def repair_torn_tail(path: Path) -> bool:
  """Cuts a partial last line (no newline at the end) off `path`; returns whether it did."""
  if not path.is_file() or path.stat().st_size == 0:
    return False
  data = path.read_bytes()
  if data.endswith(b"\n"):
    return False
  keep = data.rfind(b"\n") + 1
  with path.open("r+b") as f:
    f.truncate(keep)
  log.warning("%s: removed a partial last line (%d bytes) left by an interrupted run", path,
              len(data) - keep)
  return True


class MetricsLog:
  """The `Tracker` that keeps every row as written (trackers.py): the run's own record."""

  def __init__(self, path: Path):
    self.path = Path(path)
    repair_torn_tail(self.path)
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def append(self, row: dict[str, Any]) -> None:
    line = (json.dumps(row) + "\n").encode()
    written = os.write(self._fd, line)
    if written != len(line):  # a short write: disk full midway
      raise OSError(f"{self.path}: only {written} of {len(line)} bytes written")

  def rows(self) -> list[dict[str, Any]]:
    """Every row that parses; a damaged line is named in a warning and skipped."""
    out = []
    if not self.path.is_file():  # e.g. a link to a device: nothing to read back (never ends)
      return out
    for number, line in enumerate(self.path.read_text().splitlines(), 1):
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        log.warning("%s line %d is not JSON; skipped", self.path, number)
    return out

  def row(self, step: int, row: dict[str, Any], scalars: dict[str, float]) -> None:
    self.append(row)

  def media(self, step: int, tag: str, path: Path, caption: str = "") -> None:
    pass  # the preview files themselves are the record

  def text(self, step: int, tag: str, markdown: str) -> None:
    pass  # the run's config is config.json beside it

  def close(self, failed: bool = False) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

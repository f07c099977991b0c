"""Writing files so that a crash never leaves a truncated one under the real name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path beside `path` (same suffix: writers pick formats from it) and
  renames it onto `path` when the block succeeds; on failure nothing is left behind.

  The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600, so
  previews, plots and caches stay readable by the people who share a run or a cache.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
  os.close(fd)
  tmp_path = Path(tmp)
  try:
    yield tmp_path
    os.chmod(tmp_path, 0o666 & ~_umask())
    os.replace(tmp_path, path)
  finally:
    tmp_path.unlink(missing_ok=True)

"""Writing files and folders so that a crash never leaves a truncated one under the real name."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
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


def stray_temporaries(folder: str | os.PathLike) -> list[Path]:
  """Temporary files `atomic_path` left in `folder` (a process killed mid-write cannot clean up)."""
  folder = Path(folder)
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.name.startswith(".") and ".tmp" in p.name)


def build_folder_once(folder: str | os.PathLike, build: Callable[[Path], None]) -> Path:
  """`folder` as it is when it exists; otherwise `build(tmp)` fills a temporary sibling that is
  renamed onto `folder` when complete, so an interrupted build is redone, never used half-made.

  Temporary siblings older than an hour (left by a killed build) are removed first; younger ones
  may be another process's build in progress.
  """
  folder = Path(folder)
  if folder.is_dir():
    return folder
  folder.parent.mkdir(parents=True, exist_ok=True)
  for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
    if time.time() - stale.stat().st_mtime > 3600:
      shutil.rmtree(stale, ignore_errors=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
  try:
    build(tmp)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
      os.rename(tmp, folder)
    except OSError:
      if not folder.is_dir():  # not another process's build finishing first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return folder


STORAGE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}


class WriteFailed(RuntimeError):
  """The storage refused a write (full, read-only, no permission): one line naming what and where."""


def storage_error(e: BaseException) -> tuple[str, str | None] | None:
  """(reason, path or None) when `e` or an exception it was raised from is a storage refusal.

  Libraries wrap OS errors in their own types (Orbax, TensorStore), so the chain is searched and,
  failing an errno, the messages for the operating system's own wording.
  """
  seen: set[int] = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:
      return STORAGE_ERRORS[e.errno], e.filename
    text = str(e)
    for code, reason in STORAGE_ERRORS.items():
      if os.strerror(code) in text:
        return reason, None
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
  """Turns a storage refusal inside the block into WriteFailed naming `what` (and the file)."""
  try:
    yield
  except WriteFailed:
    raise
  except Exception as e:
    found = storage_error(e)
    if found is None:
      raise
    reason, path = found
    where = f" ({path})" if path and str(path) not in what else ""
    raise WriteFailed(f"{reason} while writing {what}{where}; free space or fix the folder's "
                      f"permissions, then run again (a run resumes from its last checkpoint)"
                      ) from e

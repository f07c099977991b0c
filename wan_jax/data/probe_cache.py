"""Remembering what the scan learned about each file, so a relaunch does not decode every clip
again. Entries are keyed by path and invalidated by size and modification time; broken files are
remembered too (their error), so they are reported without being decoded again.

The cache is a JSON file per dataset folder under `cache_dir` (default `$WAN_JAX_CACHE` or
`~/.cache/wan_jax`), never inside the user's data folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from wan_jax.data.media import MediaError, MediaInfo

log = logging.getLogger(__name__)
VERSION = 2  # bump when MediaInfo changes


def default_cache_dir() -> Path:
  return Path(os.environ.get("WAN_JAX_CACHE", Path.home() / ".cache" / "wan_jax"))


class ProbeCache:
  """path -> MediaInfo (or the MediaError it raised), persisted as JSON."""

  def __init__(self, folder: Path, cache_dir: Path | None):
    self._lock = threading.Lock()
    self._entries: dict[str, list] = {}
    self._dirty = False
    self._file = None
    if cache_dir is not None:
      digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
      self._file = Path(cache_dir) / f"scan-{digest}.json"
      try:
        data = json.loads(self._file.read_text())
        if data.get("version") == VERSION:
          self._entries = data["entries"]
      except (OSError, ValueError, KeyError):
        pass  # no cache yet, or an unreadable one: rebuilt below

  @staticmethod
  def _stamp(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]

  def probe(self, path: Path, probe_fn: Callable[[Path], MediaInfo]) -> MediaInfo:
    key = str(path.resolve())
    stamp = self._stamp(path)
    with self._lock:
      hit = self._entries.get(key)
    if hit is not None and hit[0] == stamp:
      if hit[1] == "error":
        raise MediaError(hit[2])
      return MediaInfo(**hit[2])
    try:
      info = probe_fn(path)
      entry = [stamp, "ok", dataclasses.asdict(info)]
    except MediaError as e:
      info, entry = e, [stamp, "error", str(e)]
    with self._lock:
      self._entries[key] = entry
      self._dirty = True
    if isinstance(info, MediaError):
      raise info
    return info

  def warm(self, paths: Iterable[Path], probe_fn: Callable[[Path], MediaInfo], workers: int,
           progress: Callable[[Iterable], Iterable] = lambda it: it) -> None:
    """Probes many files on `workers` threads (FFmpeg and Pillow decode outside the GIL)."""
    def one(p: Path) -> None:
      try:
        self.probe(p, probe_fn)
      except MediaError:
        pass  # remembered; reported when the scan asks for it
    paths = list(paths)
    with ThreadPoolExecutor(max(1, workers)) as pool:
      for _ in progress(pool.map(one, paths)):
        pass

  def save(self) -> None:
    if self._file is None or not self._dirty:
      return
    try:
      self._file.parent.mkdir(parents=True, exist_ok=True)
      tmp = self._file.with_suffix(".tmp")
      tmp.write_text(json.dumps({"version": VERSION, "entries": self._entries}))
      os.replace(tmp, self._file)
      self._dirty = False
    except OSError as e:
      log.warning("could not save the scan cache %s (%s); the next scan decodes again",
                  self._file, e)

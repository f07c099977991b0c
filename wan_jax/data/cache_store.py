"""Cache files on disk: one safetensors file per key, written atomically.

Layout: `<root>/<kind>/<key[:2]>/<key>.safetensors` (kind: latents, weights, prompts, and what a
task derives from pixels, e.g. image-to-video's condition). A file is
written to a temporary name in the same folder and renamed into place, so a crash or Ctrl-C
during a build never leaves a truncated file under a real key; a file that is unreadable anyway
(a full disk, a copy gone wrong) or holds non-finite values is reported by name, deleted and
rebuilt by the next cache pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from wan_jax.files import atomic_path

KIND = re.compile(r"[a-z][a-z0-9_]*")  # a folder name: latents, weights, prompts, condition, ...
DTYPES = ("float32", "float16")  # what safetensors' numpy API can store


class CacheError(ValueError):
  """A cache file is missing or unreadable; the message names it."""


def digest(content: Any) -> str:
  """A stable hash of JSON-able content: the cache key."""
  blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
  return hashlib.sha256(blob).hexdigest()[:40]


class CacheStore:

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root).expanduser()

  def path(self, kind: str, key: str) -> Path:
    if not KIND.fullmatch(kind):
      raise ValueError(f"a cache kind is a lowercase name such as 'latents', got {kind!r}")
    return self.root / kind / key[:2] / f"{key}.safetensors"

  def has(self, kind: str, key: str) -> bool:
    return self.path(kind, key).is_file()

  def write(self, kind: str, key: str, tensors: dict[str, np.ndarray],
            metadata: dict[str, str] | None = None) -> Path:
    path = self.path(kind, key)
    with atomic_path(path) as tmp:
      arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
      safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
    return path

  def read(self, kind: str, key: str) -> dict[str, np.ndarray]:
    """The file's tensors. A damaged file (unreadable, or holding NaN or infinite values, which
    no encoder pass writes) is deleted so that the next cache pass rebuilds it, and CacheError
    names it."""
    path = self.path(kind, key)
    try:
      tensors = safetensors.numpy.load_file(path)
    except FileNotFoundError:
      raise CacheError(f"cache file missing: {path} (build the caches first)") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CacheError(f"cache file unreadable: {path} ({type(e).__name__}: {e}); "
                       f"{self._discard(path)}") from e
    bad = [name for name, t in tensors.items()
           if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all()]
    if bad:
      raise CacheError(f"cache file holds NaN or infinite values in {bad[0]!r}: {path}; "
                       f"{self._discard(path)}")
    return tensors

  @staticmethod
  def _discard(path: Path) -> str:
    """Deletes a damaged file; says what happens next (a read-only cache keeps it)."""
    try:
      path.unlink(missing_ok=True)
    except OSError as e:
      return f"could not remove it ({e.strerror}); delete it to have it rebuilt"
    return "removed: the next cache pass rebuilds it"

  def remove(self, kind: str, key: str) -> None:
    self.path(kind, key).unlink(missing_ok=True)

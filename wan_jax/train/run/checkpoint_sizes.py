"""The size of every file of a committed checkpoint, recorded after Orbax commits it and
compared before Orbax reads it.

A checkpoint cut short after its commit (a copy that stopped, a full disk on a later sync, a
file truncated by hand) fails inside Orbax's restore, which then abandons its other reads on an
event loop it has closed: they print "Event loop is closed" tracebacks until the interpreter
exits, long after the run fell back to an older checkpoint. Comparing sizes first finds such a
checkpoint without starting that read. Changed bytes of the same length are left to the
fingerprints in the metadata (checksums.py), which are checked after the read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from wan_jax.files import atomic_path

SIZES_FILE = "wan_jax_file_sizes.json"  # in the step folder, beside Orbax's _CHECKPOINT_METADATA
log = logging.getLogger(__name__)


def _item_files(step_dir: Path) -> dict[str, int]:
  """Relative path -> bytes of every file in the step's item folders (state, meta, data); the
  step folder's own files are Orbax's bookkeeping."""
  sizes = {}
  for item in sorted(p for p in step_dir.iterdir() if p.is_dir()):
    for root, _, files in os.walk(item):
      for name in files:
        path = Path(root, name)
        sizes[path.relative_to(step_dir).as_posix()] = path.stat().st_size
  return sizes


def record(step_dir: Path) -> None:
  """Writes the sizes of a committed step's files once (atomically; an existing record stays)."""
  target = step_dir / SIZES_FILE
  if target.exists():
    return
  sizes = _item_files(step_dir)
  with atomic_path(target) as tmp:
    tmp.write_text(json.dumps(sizes, indent=0, sort_keys=True))


def damage(step_dir: Path) -> str | None:
  """Why the step's files differ from when they were recorded (one line), or None when they
  match or were never recorded (a run stopped right after the save). An unreadable record is
  a warning: the read and the fingerprints still check the checkpoint itself."""
  target = step_dir / SIZES_FILE
  if not target.is_file():
    return None
  try:
    recorded = json.loads(target.read_text())
    if not isinstance(recorded, dict) or not all(isinstance(v, int) for v in recorded.values()):
      raise ValueError("not a mapping of file names to sizes")
  except (OSError, ValueError) as e:
    log.warning("%s is unreadable (%s: %s); the checkpoint is checked by reading it", target,
                type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    return None
  for name, size in sorted(recorded.items()):
    path = step_dir / name
    if not path.is_file():
      return f"{name} is missing"
    now = path.stat().st_size
    if now != size:
      return f"{name} holds {now} bytes, {size} when saved"
  return None

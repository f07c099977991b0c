"""One run per workdir: two runs on one folder would interleave checkpoints, exports and metrics.

The lock is an exclusive `flock` on `<workdir>/.lock`, held for the run's life. The kernel drops
it when the process ends in any way (exit, exception, kill -9), so a lock file left by a dead run
is simply taken over; the file only records who holds it, for the refusal message. On several
hosts, process 0 holds it for the whole run.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from wan_jax.files import writing

LOCK_FILE = ".lock"


class WorkdirBusy(ValueError):
  """Another live run holds the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: Path, enabled: bool = True) -> Iterator[None]:
  """Holds the workdir's lock inside the block; raises WorkdirBusy naming the holder."""
  if not enabled:
    yield
    return
  path = Path(workdir) / LOCK_FILE
  with writing(str(path)):  # a read-only workdir: one line, not a traceback
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
      raise WorkdirBusy(f"{workdir} is in use by another run ({holder}); wait for it to end or "
                        f"choose another --workdir") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock

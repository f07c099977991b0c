"""Stopping a run on request: SIGTERM (what Slurm, Kubernetes and cloud preemption send, with a
grace period) or Ctrl-C (SIGINT).

While the loop runs, the first signal is only noted: the step in flight finishes, a checkpoint
is saved and waited for, and the run ends with `Interrupted` (launch.py prints its one line and
exits non-zero); the same command resumes. A second signal, or one before the first step, stops
the process at once with one line (os._exit: an exception raised from a signal handler can land
in a garbage-collection callback, where Python prints it and carries on). Nothing is lost then
that a rerun needs: caches, checkpoints and exports are written atomically, an unfinished
checkpoint is removed when the next run starts, and the kernel releases the workdir's lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
  """The run stopped on a signal. A KeyboardInterrupt, so no `except Exception` swallows it."""

  def __init__(self, signum: int, step: int, saved: bool):
    super().__init__(signum, step, saved)
    self.signum, self.step, self.saved = signum, step, saved

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT

  def __str__(self) -> str:
    if self.saved:
      return f"stopped at step {self.step}: saved; run the same command to resume"
    return f"stopped at step {self.step} before anything was trained; run the same command to " \
           "start again"


class StopRequest:
  """The signal handlers of one run; `signum` is the first signal noted while `deferring`."""

  def __init__(self) -> None:
    self.signum: int | None = None
    self.deferring = False

  def _handle(self, signum: int, frame) -> None:  # noqa: ARG002 - the handler's signature
    if self.deferring and self.signum is None:
      self.signum = signum
      print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
            "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)
      return
    sys.stdout.flush()
    print(f"\nstopped at once ({signal.Signals(signum).name}): run the same command to resume "
          "from the last complete checkpoint", file=sys.stderr, flush=True)
    os._exit(128 + signum)

  def requested(self) -> bool:
    """Whether to stop before the next step; on several hosts, whether any host was signalled
    (all of them must stop after the same step, or the next collective would hang)."""
    if jax.process_count() == 1:
      return self.signum is not None
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and flags.max():
      self.signum = int(flags.max())
    return self.signum is not None

  @contextlib.contextmanager
  def installed(self) -> Iterator[StopRequest]:
    """The handlers inside the block (in the main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)

"""One run per workdir: a second launch is refused with one line naming the holder; a lock left
by a dead run is taken over."""

from __future__ import annotations

import os

import pytest


def test_one_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path):
  from helpers import get_config

  from wan_jax.train.run.trainer import train
  from wan_jax.train.run.workdir_lock import WorkdirBusy, workdir_lock
  (tmp_path / ".lock").write_text("pid 999999999 on gone-host, since 2020-01-01T00:00:00")
  with workdir_lock(tmp_path):  # a stale file from a dead run: taken over
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(WorkdirBusy, match=rf"^{tmp_path} is in use by another run \(pid "
                                          rf"{os.getpid()} on .*\); wait for it to end or choose"):
      train(get_config(), tmp_path, progress=False)
  assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # the refused run wrote nothing
  with workdir_lock(tmp_path):  # released on leaving the block
    pass

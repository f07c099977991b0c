"""Orbax checkpoints of the whole training state: every trained expert's trainable weights and
optimizer state, the step counters, and the Grain iterator's position.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
during a save restarts from the last complete step (temporary folders left by a crash are removed
at start). The RNG needs no saving: every step's key is a pure function of (seed, step), and the
expert schedule is a pure function of the step.

A complete checkpoint can still be damaged later (a flipped byte, a truncated or deleted file).
Every save records a fingerprint of each array (`checksums.py`) in its metadata and, once
committed, the size of each file (`checkpoint_sizes.py`: a cut file is found before Orbax reads
it). A checkpoint that cannot be read or does not match is set aside into
`damaged_checkpoints/` with a warning naming it, and the previous one is used.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from wan_jax.files import writing
from wan_jax.train.run import checkpoint_sizes
from wan_jax.train.run.checksums import checksums, mismatches

STATE, META, DATA = "state", "meta", "data"
DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/, so Orbax never lists them as steps
log = logging.getLogger(__name__)


class NoUsableCheckpoint(ValueError):
  """Every checkpoint of the run is damaged: nothing safe to resume from."""


class DamagedCheckpoint(Exception):
  """One checkpoint failed to read or to verify."""


def _reason(e: BaseException) -> str:
  """One line: the first line of the error, at most 200 characters."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class Checkpoints:

  def __init__(self, directory: Path, every: int, keep: int, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every)), max_to_keep=max(1, int(keep)),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler()})
    # Orbax removes the temporary folders of an interrupted save in a thread of its own that
    # nothing else waits for: one still running when a refused run exits fails in the
    # interpreter's shutdown ("cannot schedule new futures"). Wait for it here.
    getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
    self.every = max(1, int(every))
    self.damaged: dict[int, str] = {}  # step -> why, found by newest_meta / restore_newest

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `save(step, ...)` would save (without `force`)."""
    return step % self.every == 0

  def save(self, step: int, state: Any, meta: dict, iterator: Any, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); returns whether a save started."""
    if not force and step % self.every:
      return False
    meta = {**meta, "checksums": checksums(state)}
    # An asynchronous save's failure surfaces here, at the next one.
    with writing(f"checkpoint step {step} (or the one before it) under {self.directory}"):
      # Orbax waits here for the save before anyway; waiting first also lets its background
      # removal of old steps finish before a size record is written into a step folder.
      self.manager.wait_until_finished()
      self._record_sizes()
      return self.manager.save(step, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
             DATA: grain.checkpoint.CheckpointSave(iterator)}), force=force)

  def meta(self, step: int) -> dict:
    """The step's metadata alone (checked before any array is read)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]

  def _candidates(self) -> list[int]:
    """Steps not yet found damaged, newest first; one whose files no longer have the sizes they
    were saved with is found damaged here, before Orbax reads it (checkpoint_sizes.py)."""
    out = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      if step not in self.damaged:
        why = checkpoint_sizes.damage(self.directory / str(step))
        if why is None:
          out.append(step)
        else:
          self.damaged[step] = why
    return out

  def _record_sizes(self) -> None:
    """Records the file sizes of every committed step that has no record yet (process 0). A
    step's folder takes its final name only once Orbax has committed it; call with no save in
    flight (Orbax removes old steps in the save's thread)."""
    if jax.process_index() != 0:
      return
    for path in self.directory.iterdir():
      if path.name.isdigit() and path.is_dir():
        checkpoint_sizes.record(path)

  def newest_meta(self) -> tuple[int, dict] | None:
    """(step, metadata) of the newest checkpoint whose metadata reads; None without checkpoints.

    Cheap (no arrays are read): lets the trainer refuse a mismatched resume before any weights
    load. Unreadable ones are remembered as damaged for `restore_newest`.
    """
    for step in self._candidates():
      try:
        meta = self.meta(step)
        if not isinstance(meta, dict) or "step" not in meta:
          raise DamagedCheckpoint("its metadata is not a training checkpoint's")
        return step, meta
      except Exception as e:  # Orbax raises many types for a damaged folder
        self.damaged[step] = f"metadata unreadable ({_reason(e)})"
    self._none_usable()
    return None

  def restore_newest(self, abstract_state: Any, iterator: Any,
                     check: Callable[[dict], None] = lambda meta: None
                     ) -> tuple[int, Any, dict]:
    """(step, state placed like `abstract_state`'s shardings, meta) of the newest checkpoint that
    reads and verifies; the iterator is restored in place. Newer damaged ones are set aside.

    `check(meta)` may refuse a checkpoint of a different run (its error propagates).
    """
    for step in self._candidates():
      try:
        got = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore(),
               DATA: grain.checkpoint.CheckpointRestore(iterator)}))
        state, meta = got[STATE], got[META]
      except Exception as e:
        self.damaged[step] = f"unreadable ({_reason(e)})"
        continue
      check(meta)
      if "checksums" in meta:
        bad = mismatches(state, meta["checksums"])
        if bad:
          self.damaged[step] = (f"{len(bad)} array(s) differ from what was saved, e.g. "
                                f"{bad[0]}")
          continue
      self._set_aside(newer_than=step)
      return step, state, meta
    self._none_usable()
    raise AssertionError("unreachable: no checkpoints were listed")

  def _none_usable(self) -> None:
    if self.damaged and not self._candidates():
      detail = "; ".join(f"step {s}: {why}" for s, why in sorted(self.damaged.items()))
      raise NoUsableCheckpoint(
          f"every checkpoint in {self.directory} is damaged ({detail}); remove that folder to "
          f"start the run over")

  def _set_aside(self, newer_than: int) -> None:
    """Moves damaged checkpoints newer than the one restored out of Orbax's folder, so the run
    can save those steps again; the warning names each one."""
    steps = sorted(s for s in self.damaged if s > newer_than)
    if not steps:
      return
    target = self.directory.parent / DAMAGED_DIR
    for step in steps:
      moved = target / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      if jax.process_index() == 0:
        target.mkdir(exist_ok=True)
        shutil.move(self.directory / str(step), moved)
      log.warning("checkpoint %s is damaged (%s): moved to %s; resuming from step %d instead",
                  self.directory / str(step), self.damaged[step], moved, newer_than)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("wan_jax_set_aside_damaged_checkpoints")
    self.manager.reload()

  def wait(self) -> None:
    with writing(f"the last checkpoint under {self.directory}"):
      self.manager.wait_until_finished()
      self._record_sizes()

  def close(self) -> None:
    """Waits for a save in flight, then closes the manager and its threads, also when that save
    failed (Orbax raises a failed save once per thread, so the close after it goes through)."""
    try:
      self.manager.wait_until_finished()
      self._record_sizes()
    finally:
      self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings: what Orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)

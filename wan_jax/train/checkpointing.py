"""Orbax checkpoints of the whole training state: every trained expert's trainable weights and
optimizer state, the step counters, and the Grain iterator's position.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
during a save restarts from the last complete step. The RNG needs no saving: every step's key is
a pure function of (seed, step), and the expert schedule is a pure function of the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

STATE, META, DATA = "state", "meta", "data"


class Checkpoints:

  def __init__(self, directory: Path, every: int, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every)), max_to_keep=max(1, int(keep)),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        Path(directory).absolute(), options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler()})
    self.every = max(1, int(every))

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, iterator: Any, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); returns whether a save started."""
    if not force and step % self.every:
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta),
           DATA: grain.checkpoint.CheckpointSave(iterator)}), force=force)

  def meta(self, step: int) -> dict:
    """The step's metadata alone (checked before any array is read)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]

  def restore(self, step: int, abstract_state: Any, iterator: Any) -> tuple[Any, dict]:
    """(state placed like `abstract_state`'s shardings, meta); the iterator is restored in place."""
    got = self.manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore(),
           DATA: grain.checkpoint.CheckpointRestore(iterator)}))
    return got[STATE], got[META]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings: what Orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)

"""Checkpoints you can trust: a damaged newest checkpoint (bytes flipped, a file truncated, the
arrays deleted, the metadata garbled) is named, set aside and the previous one restored; with
none usable, one line says which folder to remove."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan_jax.train.run import checkpoint_sizes
from wan_jax.train.run.checkpointing import DAMAGED_DIR, Checkpoints, NoUsableCheckpoint
from wan_jax.train.run.checksums import checksums

from helpers import flip_bytes, largest_array_file


def state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(64, 96)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(33,)), jnp.bfloat16),
          "count": jnp.asarray(seed, jnp.int32)}


def iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def saved_run(root: Path) -> Checkpoints:
  """Steps 1 and 2 saved; the iterator advanced once between them."""
  ckpt = Checkpoints(root / "checkpoints", every=1, keep=5, async_save=False)
  it = iterator()
  ckpt.save(1, state(1), {"step": 1}, it)
  next(it)
  ckpt.save(2, state(2), {"step": 2}, it)
  ckpt.close()
  return Checkpoints(root / "checkpoints", every=1, keep=5, async_save=False)


def truncate(step_dir: Path) -> None:
  path = largest_array_file(step_dir)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def delete_state(step_dir: Path) -> None:
  import shutil
  shutil.rmtree(step_dir / "state")


def garble_metadata(step_dir: Path) -> None:
  """Not JSON, at the length it had (a changed length is found before reading)."""
  path = step_dir / "meta/metadata"
  path.write_text("{" + "x" * (path.stat().st_size - 1))


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_fingerprints_do_not_depend_on_the_sharding():
  x = state(3)
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  sharded = {**x, "w": jax.device_put(x["w"], jax.NamedSharding(mesh, jax.P("d")))}
  assert checksums(sharded) == checksums(x)
  flipped = {**x, "w": x["w"].at[5, 7].set(-x["w"][5, 7])}  # one sign bit
  moved = {**x, "w": jnp.roll(x["w"], 1, axis=1)}  # same values, other places
  assert checksums(flipped)["['w']"] != checksums(x)["['w']"]
  assert checksums(moved)["['w']"] != checksums(x)["['w']"]


@pytest.mark.parametrize("damage", [flip_bytes, truncate, delete_state, garble_metadata])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
    tmp_path, caplog, monkeypatch, damage):
  ckpt = saved_run(tmp_path)
  damage(tmp_path / "checkpoints/2")
  asked = []  # the steps Orbax was asked to read
  orbax_restore = ckpt.manager.restore
  monkeypatch.setattr(ckpt.manager, "restore",
                      lambda step, **kw: asked.append(step) or orbax_restore(step, **kw))
  with caplog.at_level(logging.WARNING):
    found = ckpt.newest_meta()
    it = iterator()
    step, restored, meta = ckpt.restore_newest(abstract(state(1)), it)
  assert found is not None and found[0] in (1, 2)  # bytes in the arrays only show on restore
  assert step == 1 and meta["step"] == 1 and next(it) == 0
  jax.tree.map(np.testing.assert_array_equal, restored, state(1))
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert f"checkpoint {tmp_path / 'checkpoints/2'} is damaged" in warning
  assert "resuming from step 1 instead" in warning
  # A cut or missing file differs from the sizes recorded at commit: found before Orbax reads
  # anything of it (its failed read of a cut file printed tracebacks until the process exited).
  if damage in (truncate, delete_state):
    assert 2 not in asked
    cut = "holds" if damage is truncate else "is missing"
    assert f"is damaged (state/" in warning and f" {cut}" in warning
  else:
    assert 2 in asked
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
  assert [p.name.split("-")[0] for p in (tmp_path / DAMAGED_DIR).iterdir()] == ["2"]
  ckpt.save(2, state(2), {"step": 2}, it)  # the step can be saved again
  ckpt.close()


def test_an_unreadable_size_record_is_a_warning_and_the_checkpoint_is_read(tmp_path, caplog):
  ckpt = saved_run(tmp_path)
  record = tmp_path / "checkpoints/2" / checkpoint_sizes.SIZES_FILE
  assert json.loads(record.read_text())["meta/metadata"] > 0  # written when step 2 was closed
  record.write_text("[1, 2")
  with caplog.at_level(logging.WARNING):
    step, restored, _ = ckpt.restore_newest(abstract(state(2)), iterator())
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, restored, state(2))
  assert f"{record} is unreadable (JSONDecodeError" in caplog.text
  ckpt.close()


def test_with_every_checkpoint_damaged_one_line_names_the_folder_to_remove(tmp_path):
  ckpt = saved_run(tmp_path)
  flip_bytes(tmp_path / "checkpoints/2")
  garble_metadata(tmp_path / "checkpoints/1")
  with pytest.raises(NoUsableCheckpoint) as e:
    ckpt.newest_meta()
    ckpt.restore_newest(abstract(state(1)), iterator())
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"every checkpoint in {tmp_path / 'checkpoints'} is damaged (step 1: "
                            f"unreadable (JSONDecodeError")
  assert "step 2: 1 array(s) differ from what was saved, e.g. ['w']" in message
  assert message.endswith("remove that folder to start the run over")
  assert (tmp_path / "checkpoints/2").is_dir()  # nothing moved when nothing is usable



def test_fingerprints_of_an_offloaded_expert_are_taken_in_host_memory(monkeypatch):
  """An expert waiting in pinned host memory is summed there, with the device's arithmetic."""
  from wan_jax.train.run import checksums as module
  x = state(4)
  host = jax.tree.map(lambda a: jax.device_put(
      a, jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")), x)
  assert {a.sharding.memory_kind for a in jax.tree.leaves(host)} == {"pinned_host"}
  assert checksums(host) == checksums(x)
  monkeypatch.setattr(module, "_CHUNK", 1000)  # sums carried across chunks
  big = jnp.asarray(np.random.default_rng(5).integers(0, 2**31, 3000), jnp.int32)
  assert module._host_words(big) == tuple(int(w) for w in module._all_words([big])[0])

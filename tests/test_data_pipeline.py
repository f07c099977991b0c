"""The Grain pipeline: bucketed batches, per-process rows, determinism and exact resume."""

from __future__ import annotations

import collections

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from wan_jax.data.config import dataset_config
from wan_jax.data.pipeline import build_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for i in range(7):
    h = (64, 96, 80)[i % 3]
    Image.fromarray(rng.integers(0, 255, (h, 96, 3), np.uint8)).save(d / f"{i}.png")
    (d / f"{i}.txt").write_text(f"caption {i}")
  return d


def take(pipeline, n, state=None):
  it = iter(pipeline.dataset)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)]


def fingerprint(batch):
  return (batch["pixels"].shape, int(batch["pixels"].astype(np.int64).sum()),
          tuple(batch["caption"]))


def test_batches_come_from_one_bucket_and_cover_every_example(folder):
  p = build_pipeline([dataset_config(folder_path=str(folder), resolution=(64, 48),
                                     caption_dropout_rate=0.0)], global_batch=2, seed=1)
  assert len(p.entries) == 14
  batches = take(p, p.batches_per_epoch)
  seen = collections.Counter()
  for b in batches:
    assert b["pixels"].shape[0] == 2 and b["pixels"].dtype == np.uint8
    f, h, w = b["pixels"].shape[1:4]
    assert b["weights"].shape == (2, 1, h // 8, w // 8)
    seen.update((c, (h, w)) for c in b["caption"])
  assert len(seen) == 14  # every (item, resolution) at least once per epoch


def test_epochs_reshuffle(folder):
  p = build_pipeline([dataset_config(folder_path=str(folder))], global_batch=2, seed=1)
  n = p.batches_per_epoch
  batches = take(p, 2 * n)
  first = [fingerprint(b) for b in batches[:n]]
  second = [fingerprint(b) for b in batches[n:]]
  assert first != second


def test_processes_split_each_global_batch(folder):
  cfg = [dataset_config(folder_path=str(folder), caption_dropout_rate=0.0)]
  whole = take(build_pipeline(cfg, 4, seed=5, shard=grain.sharding.NoSharding()), 3)
  halves = [take(build_pipeline(cfg, 4, seed=5, shard=grain.sharding.ShardOptions(i, 2)), 3)
            for i in range(2)]
  for b, h0, h1 in zip(whole, *halves):
    np.testing.assert_array_equal(b["pixels"], np.concatenate([h0["pixels"], h1["pixels"]]))
    assert list(b["caption"]) == list(h0["caption"]) + list(h1["caption"])


def test_caption_dropout(folder):
  all_blank = take(build_pipeline([dataset_config(folder_path=str(folder),
                                                  caption_dropout_rate=1.0)], 2, seed=0), 3)
  assert all(c == "" for b in all_blank for c in b["caption"])
  none = take(build_pipeline([dataset_config(folder_path=str(folder),
                                             caption_dropout_rate=0.0)], 2, seed=0), 3)
  assert all(c.startswith("caption ") for b in none for c in b["caption"])


def test_restored_iterator_yields_the_same_batches_through_orbax(folder, tmp_path):
  cfg = [dataset_config(folder_path=str(folder), resolution=(64, 48), flip_prob=0.5,
                        random_crop=True)]
  p = build_pipeline(cfg, 2, seed=9)
  it = iter(p.dataset)
  for _ in range(5):
    next(it)
  ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckpt.save(tmp_path / "iter", args=grain.checkpoint.CheckpointSave(it))
  want = [fingerprint(next(it)) for _ in range(6)]

  fresh = iter(build_pipeline(cfg, 2, seed=9).dataset)
  ckpt.restore(tmp_path / "iter", args=grain.checkpoint.CheckpointRestore(fresh))
  assert [fingerprint(next(fresh)) for _ in range(6)] == want


def test_worker_processes_give_the_same_batches(folder):
  cfg = [dataset_config(folder_path=str(folder))]
  inline = [fingerprint(b) for b in take(build_pipeline(cfg, 2, seed=4), 4)]
  workers = [fingerprint(b) for b in take(build_pipeline(cfg, 2, seed=4, num_workers=2), 4)]
  assert workers == inline


def test_an_item_that_fails_mid_run_is_replaced_and_flagged(tmp_path):
  """A per-frame mask folder that is all black is only found when the clip is decoded."""
  import imageio.v3 as iio
  media, masks = tmp_path / "media", tmp_path / "masks"
  media.mkdir(), masks.mkdir()
  frames = np.zeros((5, 32, 32, 3), np.uint8)
  for name in ("a", "b"):
    iio.imwrite(media / f"{name}.mp4", frames, plugin="pyav", fps=16, codec="libx264")
    (masks / name).mkdir()
    for i in range(5):
      Image.new("L", (32, 32), 0 if name == "a" else 255).save(masks / name / f"{i}.png")
  p = build_pipeline([dataset_config(folder_path=str(media), mask_path=str(masks), num_frames=5,
                                     resolution=32)], 2, seed=0)
  batch = take(p, 1)[0]
  assert batch["substituted"].sum() >= 1
  assert batch["weights"].min() == 1.0  # only b's white masks made it in


def test_global_batch_must_split_over_processes(folder):
  with pytest.raises(ValueError, match="does not split"):
    build_pipeline([dataset_config(folder_path=str(folder))], 3, seed=0,
                   shard=grain.sharding.ShardOptions(0, 2))

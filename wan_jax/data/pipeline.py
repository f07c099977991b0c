"""The Grain pipeline over raw media: scanned items -> bucketed global batches -> this process's
rows, decoded -> multiprocess prefetch.

  plan (MapDataset: one element = one global batch of item indices, all from one bucket)
    -> seeded shuffle of the batch order (reshuffled every epoch)
    -> repeat
    -> decode this process's rows (ShardByJaxProcess), seeded per (batch index, row)
    -> to_iter_dataset -> mp_prefetch

Batch composition is re-drawn every epoch too. Every random choice (composition, order, frames,
crop, flip, caption dropout) is a pure function of (seed, position), so an iterator restored from
its saved state yields exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from wan_jax.data.buckets import batch_counts, bucket_batches
from wan_jax.data.examples import SkipItem, bucket_of, load_example
from wan_jax.data.folders import Item, ScanReport, scan_dataset
from wan_jax.data.weight_maps import latent_frames
from wan_jax.data import config as dcfg

log = logging.getLogger(__name__)
MAX_SUBSTITUTES = 8


@dataclasses.dataclass(frozen=True)
class Entry:
  """One item at one of its dataset's resolutions, and the bucket that puts it in."""

  item: Item
  resolution: int
  bucket: tuple[int, int, int]  # (frames, height, width)


class BatchPlan(grain.MapDataset):
  """Global batches of entry indices for any epoch: index i is batch i % n of epoch i // n."""

  def __init__(self, bucket_keys: Sequence[Any], global_batch: int, seed: int):
    super().__init__()
    self._keys = list(bucket_keys)
    self._global_batch = global_batch
    self._seed = seed
    self._plans: dict[int, tuple[tuple[int, ...], ...]] = {}  # recent epochs (read threads share it)
    self._lock = threading.Lock()
    self._length, self.filler_slots = batch_counts(self._keys, global_batch)

  def __getstate__(self):  # worker processes get a copy without the lock
    state = self.__dict__.copy()
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _epoch(self, epoch: int) -> tuple[tuple[int, ...], ...]:
    with self._lock:
      plan = self._plans.get(epoch)
      if plan is None:
        rng = np.random.default_rng([self._seed, epoch, 0xB0C])
        plan = tuple(tuple(b) for b in bucket_batches(self._keys, self._global_batch, rng))
        while len(self._plans) >= 3:
          del self._plans[min(self._plans)]
        self._plans[epoch] = plan
      return plan

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._length)
    return self._epoch(epoch)[i]

  def __str__(self) -> str:
    return f"BatchPlan({self._length} batches of {self._global_batch})"


@dataclasses.dataclass
class Pipeline:
  dataset: grain.IterDataset
  entries: list[Entry]
  report: ScanReport
  batches_per_epoch: int
  local_batch: int

  def summary(self) -> str:
    buckets = sorted({e.bucket for e in self.entries})
    return (f"{self.report.summary()}\n  {len(self.entries)} examples in {len(buckets)} buckets "
            f"(frames, height, width): {buckets[:8]}{' ...' if len(buckets) > 8 else ''}\n"
            f"  {self.batches_per_epoch} batches per epoch of {self.local_batch} per process")


def _decode_rows(index: int, batch: tuple[int, ...], *, entries: list[Entry],
                 datasets: list[ml_collections.ConfigDict], bucket_members: dict,
                 shard_index: int, shard_count: int, seed: int) -> dict[str, np.ndarray]:
  """This process's rows of global batch `index`, decoded; randomness from (seed, index, row)."""
  rows = len(batch) // shard_count
  mine = batch[shard_index * rows:(shard_index + 1) * rows]
  pixels, weights, captions, multipliers, substituted, valid = [], [], [], [], [], []
  for row, entry_id in enumerate(mine):
    global_row = shard_index * rows + row
    rng = np.random.default_rng([seed, index, global_row])
    ex, attempt = None, 0
    for attempt, cand in enumerate(_candidates(entry_id, bucket_members, [seed, index, global_row])):
      entry = entries[cand]
      cfg = datasets[entry.item.dataset]
      try:
        ex = load_example(entry.item, entry.resolution, cfg, rng)
        break
      except SkipItem:
        continue
    if ex is None:  # every candidate failed: an empty row with zero weight, never a crash
      f, h, w = entries[entry_id].bucket
      pixels.append(np.zeros((f, h, w, 3), np.uint8))
      weights.append(np.zeros((latent_frames(f), h // 8, w // 8), np.float32))
      captions.append("")
      multipliers.append(0.0)
      substituted.append(True)
      valid.append(False)
      continue
    pixels.append(ex.pixels)
    weights.append(ex.weights)
    captions.append("" if rng.random() < float(cfg.caption_dropout_rate) else ex.caption)
    multipliers.append(float(cfg.loss_multiplier))
    substituted.append(attempt > 0)
    valid.append(True)
  return {
      "pixels": np.stack(pixels),
      "weights": np.stack(weights),
      "caption": np.array(captions, dtype=object),
      "loss_multiplier": np.array(multipliers, np.float32),
      "substituted": np.array(substituted),  # a stand-in from the same bucket was used
      "valid": np.array(valid),  # False: nothing in the bucket decoded; zero weight, skip it
  }


def _candidates(entry_id: int, bucket_members: dict, seed: list[int]):
  """The entry, then (drawn only if it fails to decode) other entries of its bucket."""
  yield entry_id
  members = bucket_members[entry_id]
  rng = np.random.default_rng([*seed, 1])
  picks = rng.choice(len(members), size=min(MAX_SUBSTITUTES, len(members)), replace=False)
  yield from (members[i] for i in picks if members[i] != entry_id)


def build_pipeline(datasets: Sequence[ml_collections.ConfigDict], global_batch: int, seed: int,
                   num_workers: int = 0, num_epochs: int | None = None,
                   shard: grain.sharding.ShardOptions | None = None, read_threads: int = 2,
                   prefetch_batches: int = 2) -> Pipeline:
  """Scans every dataset (errors surface here, before training) and builds the iterator.

  read_threads / prefetch_batches bound how far ahead each process (or worker) decodes: a batch
  of 81-frame clips is hundreds of MB, so Grain's default of 500 elements ahead would not fit.
  """
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if global_batch % shard.shard_count:
    raise ValueError(f"global batch {global_batch} does not split over {shard.shard_count} processes")
  report = ScanReport()
  for i, ds in enumerate(datasets):
    scan_dataset(ds, i, report)
  entries = []
  for item in report.items:
    # A small item can land in the same bucket at several resolutions: once is enough.
    buckets = {bucket_of(item, r): r for r in reversed(dcfg.resolutions(datasets[item.dataset]))}
    entries += [Entry(item, r, b) for b, r in sorted(buckets.items(), key=lambda br: br[1])]
  keys = [e.bucket for e in entries]
  by_key: dict[Any, list[int]] = {}
  for i, k in enumerate(keys):
    by_key.setdefault(k, []).append(i)
  bucket_members = {i: by_key[k] for i, k in enumerate(keys)}

  plan = BatchPlan(keys, global_batch, seed)
  filler = plan.filler_slots
  if filler:
    log.info("%d batch slots per epoch repeat an item to fill the last batch of a bucket", filler)
    report.notes["batch slots filled with a repeated item (per epoch)"] = filler
  decode = functools.partial(_decode_rows, entries=entries, datasets=list(datasets),
                             bucket_members=bucket_members, shard_index=shard.shard_index,
                             shard_count=shard.shard_count, seed=seed)
  read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
  ds = plan.shuffle(seed).repeat(num_epochs).map_with_index(decode).to_iter_dataset(read)
  if num_workers > 0:
    from absl import flags  # Grain's workers read absl flags; plain Python callers never parse them
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return Pipeline(ds, entries, report, len(plan), global_batch // shard.shard_count)

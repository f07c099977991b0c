"""The Grain pipeline over raw media: scanned items -> bucketed global batches -> this process's
rows, decoded -> multiprocess prefetch.

  plan (MapDataset: one element = one global batch of item indices, all from one bucket)
    -> seeded shuffle of the batch order (reshuffled every epoch)
    -> repeat
    -> decode this process's rows (ShardByJaxProcess), seeded per (batch index, row)
    -> to_iter_dataset -> mp_prefetch

Batch composition is re-drawn every epoch too. Every random choice (composition, order, frames,
crop, flip, caption dropout, which condition an image-to-video row reads) is a pure function of
(seed, position), so an iterator restored from its saved state yields exactly the batches the
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any, Callable, Sequence

import grain
import ml_collections
import numpy as np

from wan_jax.data.buckets import batch_counts, bucket_batches
from wan_jax.data.cache_store import CacheError
from wan_jax.data.caches import (BLANK, BuildReport, CachePlan, CacheSettings, build_caches,
                                 flip_variants, plan_caches, read_variant)
from wan_jax.data.examples import SkipItem, bucket_of, load_example
from wan_jax.data.folders import DataError, Item, ScanReport, scan_dataset
from wan_jax.data import config as dcfg
from wan_jax.model.latent_geometry import WAN21, LatentGeometry
from wan_jax.tasks import TEXT_TO_VIDEO, Task
from wan_jax.tasks.i2v_images import ImageTraining

log = logging.getLogger(__name__)
MAX_SUBSTITUTES = 8
# How a row trained (`form`, counted in the run's summary): a clip (image-to-video: on its first
# frame, or on its first and last frames), a still image (image-to-video: with an empty
# condition), a degraded copy of itself, or as a static clip; or nothing readable.
FORM_CLIP, FORM_FIRST_LAST, FORM_IMAGE, FORM_DEGRADED, FORM_STATIC_CLIP, FORM_NONE = (
    "clip", "clip on its first and last frames", "image", "image on a degraded copy",
    "image as a static clip", "")
FORMS = (FORM_CLIP, FORM_FIRST_LAST, FORM_IMAGE, FORM_DEGRADED, FORM_STATIC_CLIP)


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
  cache_plan: CachePlan | None = None  # set when batches come from the caches
  cache_report: BuildReport | None = None
  datasets: Sequence[ml_collections.ConfigDict] = ()

  def buckets(self) -> list[tuple[int, int, int]]:
    """Every (frames, height, width) a batch can have: the entries' buckets and, when still
    images also train as static clips (image-to-video), those clips'."""
    shapes = {e.bucket for e in self.entries}
    if self.cache_plan is not None:  # the static clips the plan holds files for
      shapes |= {v.clip.geometry.bucket for by_flip in self.cache_plan.variants
                 for v in by_flip.values() if v.clip is not None}
    return sorted(shapes)

  def summary(self) -> str:
    buckets = sorted({e.bucket for e in self.entries})
    cached = f"\n  {self.cache_report.summary()}" if self.cache_report else ""
    images = self.cache_plan.images if self.cache_plan is not None else None
    stills = len({id(e.item) for e in self.entries if e.item.num_frames == 1})
    task = (f"\n  {stills} of {len({id(e.item) for e in self.entries})} items are one frame: "
            f"{images.describe()}" if images is not None and stills else "")
    return (f"{self.report.summary()}{cached}\n  {len(self.entries)} examples in {len(buckets)} "
            f"buckets (frames, height, width): {buckets[:8]}{' ...' if len(buckets) > 8 else ''}"
            f"{task}{self._first_last()}\n  {self.batches_per_epoch} batches per epoch of "
            f"{self.local_batch} per process")

  def _first_last(self) -> str:
    """The data notice's first-last-frame line ('' when no clip trains that way)."""
    plan = self.cache_plan
    if plan is None:
      return ""
    clips = {id(e.item): e.item for e in self.entries if e.item.num_frames > 1}
    flf = {id(e.item): e.item for i, e in enumerate(self.entries)
           if any(v.first_last_keys for v in plan.variants[i].values())}
    if not flf:
      return ""
    shares = sorted({float(self.datasets[it.dataset].last_frame_prob) for it in flf.values()})
    share = "every row" if shares == [1.0] else (
        "/".join(f"{p:.0%}" for p in shares) + " of their rows" + (" (by data set)" if
        len(shares) > 1 else "") + ", on their first frame otherwise")
    return (f"\n  {len(flf)} of {len(clips)} clips train first-last frame: conditioned on their "
            f"first and last frames in {share}")


class RowReader:
  """One row of a batch: raw pixels and weights, or (with caches) latents, weights and context."""

  def __init__(self, entries: list[Entry], datasets: list[ml_collections.ConfigDict],
               plan: CachePlan | None):
    self.entries, self.datasets, self.plan = entries, datasets, plan
    if plan is not None:
      self._blank = plan.prompt(BLANK)

  def as_clip(self, index: int, entry_id: int, seed: int) -> bool:
    """Whether global batch `index` (whose rows share `entry_id`'s bucket) trains its still
    images as static clips: drawn per batch, the same on every process (one shape per batch)."""
    images = self.plan.images if self.plan is not None else None
    if images is None or not images.clip_training or self.entries[entry_id].bucket[0] != 1:
      return False
    return bool(np.random.default_rng([seed, index, 0xC11]).random() < images.clip_training_prob)

  def read(self, entry_id: int, rng: np.random.Generator, clip: bool = False,
           condition_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One row; with `clip`, a still image as its static clip; `condition_rng` draws which
    condition an image-to-video row reads: a still image's degraded copy of itself, or a clip's
    first-last-frame condition."""
    entry = self.entries[entry_id]
    cfg = self.datasets[entry.item.dataset]
    form = FORM_CLIP if entry.item.num_frames > 1 else FORM_IMAGE
    if self.plan is None:
      ex = load_example(entry.item, entry.resolution, cfg, rng)
      row = {"pixels": ex.pixels, "weights": ex.weights}
      caption = ex.caption
    else:
      degraded = self._degraded(entry_id, clip, condition_rng)
      first_last = self._first_last(entry_id, cfg, condition_rng)
      row = self._cached(entry_id, entry, cfg, rng, clip, degraded, first_last)
      caption = entry.item.caption
      if clip:
        form = FORM_STATIC_CLIP
      elif degraded is not None:
        form = FORM_DEGRADED
      elif first_last:
        form = FORM_FIRST_LAST
    row["form"] = form
    if rng.random() < float(cfg.caption_dropout_rate):
      caption = BLANK
    row["caption"] = caption
    row["loss_multiplier"] = float(cfg.loss_multiplier)
    if self.plan is not None:
      row["context"] = self._context(caption)
    return row

  def _degraded(self, entry_id: int, clip: bool,
                rng: np.random.Generator | None) -> int | None:
    """Which degraded copy of a still image's condition this row reads (None: its own)."""
    copies = len(next(iter(self.plan.variants[entry_id].values())).degraded_keys)
    if clip or not copies or rng is None or rng.random() >= self.plan.images.conditioning_prob:
      return None
    return int(rng.integers(copies))

  def _first_last(self, entry_id: int, cfg, rng: np.random.Generator | None) -> bool:
    """Whether a clip's row conditions on its first and last frames: always with
    last_frame_prob 1, drawn from `rng` (one number, per row) below it."""
    if not any(v.first_last_keys for v in self.plan.variants[entry_id].values()):
      return False  # a still image, or a data set without the option
    prob = float(cfg.last_frame_prob)
    return prob >= 1.0 or (rng is not None and bool(rng.random() < prob))

  def _cached(self, entry_id: int, entry: Entry, cfg, rng, clip: bool = False,
              degraded: int | None = None, first_last: bool = False) -> dict[str, np.ndarray]:
    flips = flip_variants(cfg)
    flip = flips[0] if len(flips) == 1 else bool(rng.random() < float(cfg.flip_prob))
    try:
      return read_variant(self.plan, entry_id, flip, clip, degraded, first_last)
    except CacheError as e:
      log.warning("skipping %s: %s", entry.item.media, e)
      raise SkipItem(str(e)) from e

  def _context(self, caption: str) -> np.ndarray:
    """[text_len, D] float32: the cached embedding zero-padded as Wan pads it. An unreadable
    embedding skips the row (it is replaced and counted), never trains it unconditioned. Read
    per row (a few MB from the page cache): holding every caption's padded context would not fit."""
    try:
      emb = self._blank if caption == BLANK else self.plan.prompt(caption)
    except CacheError as e:
      log.warning("skipping a row captioned %r: %s", caption[:60], e)
      raise SkipItem(str(e)) from e
    ctx = np.zeros((self.plan.settings.text_len, emb.shape[1]), np.float32)
    ctx[:len(emb)] = emb
    return ctx

  def empty(self, entry_id: int, clip: bool = False) -> dict[str, Any]:
    """A zero-weight row of the entry's bucket, for when nothing in the bucket could be read."""
    f, h, w = self.entries[entry_id].bucket
    if clip:
      f = self.plan.images.clip_num_frames
    latent = self.entries[entry_id].item.latent
    weights = np.zeros(latent.grid(f, h, w), np.float32)
    if self.plan is None:
      return {"pixels": np.zeros((f, h, w, 3), np.uint8), "weights": weights, "caption": BLANK,
              "loss_multiplier": 0.0, "form": FORM_NONE}
    lat = np.zeros((*weights.shape, latent.channels), np.float32)
    return {"latent_mean": lat, "latent_logvar": lat, "weights": weights, "caption": BLANK,
            "form": FORM_NONE,
            "context": np.zeros((self.plan.settings.text_len, self._blank.shape[1]), np.float32),
            "loss_multiplier": 0.0, **self.plan.task.empty_arrays(weights.shape)}


def _decode_rows(index: int, batch: tuple[int, ...], *, reader: RowReader, bucket_members: dict,
                 shard_index: int, shard_count: int, seed: int) -> dict[str, np.ndarray]:
  """This process's rows of global batch `index`, read; randomness from (seed, index, row)."""
  rows_per_shard = len(batch) // shard_count
  mine = batch[shard_index * rows_per_shard:(shard_index + 1) * rows_per_shard]
  clip = reader.as_clip(index, batch[0], seed)
  rows, substituted, valid = [], [], []
  for row, entry_id in enumerate(mine):
    global_row = shard_index * rows_per_shard + row
    rng = np.random.default_rng([seed, index, global_row])
    got, attempt = None, 0
    for attempt, cand in enumerate(_candidates(entry_id, bucket_members, [seed, index, global_row])):
      try:
        got = reader.read(cand, rng, clip, np.random.default_rng([seed, index, global_row, 2]))
        break
      except SkipItem:
        continue
    if got is None:  # every candidate failed: an empty row with zero weight, never a crash
      rows.append(reader.empty(entry_id, clip))
      substituted.append(True)
      valid.append(False)
      continue
    rows.append(got)
    substituted.append(attempt > 0)
    valid.append(True)
  text = ("caption", "form")
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in (*text, "loss_multiplier")}
  for k in text:
    out[k] = np.array([r[k] for r in rows], dtype=object)
  out["loss_multiplier"] = np.array([r["loss_multiplier"] for r in rows], np.float32)
  out["substituted"] = np.array(substituted)  # a stand-in from the same bucket was used
  out["valid"] = np.array(valid)  # False: nothing in the bucket could be read; zero weight
  return out


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
                   prefetch_batches: int = 2, caches: CacheSettings | None = None,
                   load_vae: Callable[[], Any] | None = None,
                   load_text: Callable[[], tuple[Any, Any]] | None = None,
                   extra_prompts: Sequence[str] = (), progress: bool = True,
                   task: Task = TEXT_TO_VIDEO, images: ImageTraining | None = None,
                   latent: LatentGeometry = WAN21) -> Pipeline:
  """Scans every dataset (errors surface here, before training) and builds the iterator.

  Without `caches`, batches hold uint8 `pixels` and `weights`. With them, missing cache files
  are built first (`load_vae` / `load_text` are called only then) and batches hold
  `latent_mean`, `latent_logvar` (un-normalised VAE moments), `weights` and `context` (prompt
  embeddings padded to text_len), plus the arrays `task` derives from pixels (image-to-video's
  `condition`); items that cannot be encoded are dropped and counted, and items the task cannot
  learn from are skipped by name. `images`: how one-frame items train image-to-video (with
  caches; wan_jax/tasks/i2v_images.py). Each batch also holds each row's `form` (how it
  trained, for the run's summary). `latent`: the model's latent geometry (bucket sides, weight
  maps, latent shapes).
  read_threads / prefetch_batches bound how far ahead each process (or worker) decodes: a batch
  of 81-frame clips is hundreds of MB, so Grain's default of 500 elements ahead would not fit.
  """
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if global_batch % shard.shard_count:
    raise ValueError(f"global batch {global_batch} does not split over {shard.shard_count} processes")
  report = ScanReport()
  for i, ds in enumerate(datasets):
    scan_dataset(ds, i, report, latent=latent)
  refused = {id(item): task.skip_reason(item) for item in report.items}
  for item in {id(i): i for i in report.items if refused[id(i)]}.values():  # repeats once
    report.skip(item.media, f"{task.title}: {refused[id(item)]}")
  report.items = [item for item in report.items if not refused[id(item)]]
  if not report.items:
    raise DataError(f"no item of the data sets can train {task.title}; see the warnings above")
  entries = []
  for item in report.items:
    # A small item can land in the same bucket at several resolutions: once is enough.
    buckets = {bucket_of(item, r): r for r in reversed(dcfg.resolutions(datasets[item.dataset]))}
    entries += [Entry(item, r, b) for b, r in sorted(buckets.items(), key=lambda br: br[1])]

  for i, ds in enumerate(datasets):
    if float(ds.get("last_frame_prob", 0.0)) > 0 and not task.first_last_arrays:
      raise DataError(f"datasets[{i}].last_frame_prob conditions clips on their last frame too, "
                      f"an image-to-video option; this run trains {task.title}: set it to 0")
  plan, cache_report = None, None
  if caches is not None:
    plan, cache_report, entries = _cached_entries(entries, datasets, caches, load_vae, load_text,
                                                  extra_prompts, progress, report, task, images)
  keys = [e.bucket for e in entries]
  by_key: dict[Any, list[int]] = {}
  for i, k in enumerate(keys):
    by_key.setdefault(k, []).append(i)
  bucket_members = {i: by_key[k] for i, k in enumerate(keys)}

  batch_plan = BatchPlan(keys, global_batch, seed)
  filler = batch_plan.filler_slots
  if filler:
    log.info("%d batch slots per epoch repeat an item to fill the last batch of a bucket", filler)
    report.notes["batch slots filled with a repeated item (per epoch)"] = filler
  reader = RowReader(entries, list(datasets), plan)
  decode = functools.partial(_decode_rows, reader=reader, bucket_members=bucket_members,
                             shard_index=shard.shard_index, shard_count=shard.shard_count,
                             seed=seed)
  read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
  ds = batch_plan.shuffle(seed).repeat(num_epochs).map_with_index(decode).to_iter_dataset(read)
  if num_workers > 0:
    from absl import flags  # Grain's workers read absl flags; plain Python callers never parse them
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return Pipeline(ds, entries, report, len(batch_plan), global_batch // shard.shard_count, plan,
                  cache_report, list(datasets))


def _cached_entries(entries, datasets, settings, load_vae, load_text, extra_prompts, progress,
                    report: ScanReport, task: Task, images: ImageTraining | None
                    ) -> tuple[CachePlan, BuildReport, list[Entry]]:
  """Plans and builds the caches; returns the plan and entries restricted to what encoded."""
  pairs = [(e.item, e.resolution) for e in entries]
  plan = plan_caches(pairs, datasets, settings, extra_prompts, task, images)
  damaged = plan.repair_prompts([BLANK, *extra_prompts])  # needed whole: never a stand-in
  for warning in damaged:
    log.warning("%s", warning)
  missing = plan.missing()
  if any(missing) and (load_vae is None or load_text is None):
    lat, wts, texts = missing
    raise CacheError(f"caches under {settings.root} are incomplete ({len(lat)} latents, "
                     f"{len(wts)} weight maps, {len(texts)} prompts missing) and no encoders "
                     "were given to build them")
  built = build_caches(plan, pairs, datasets, load_vae, load_text, progress=progress,
                       missing=missing)
  built.damaged = len(damaged)
  for path, reason in built.failed:
    report.skipped.append((path, f"could not be encoded: {reason}"))
  keep = [i for i in range(len(entries)) if i not in plan.failed]
  if not keep:
    raise DataError("no item could be encoded into the latent cache; see the warnings above")
  plan.variants = [plan.variants[i] for i in keep]
  plan.failed = set()
  return plan, built, [entries[i] for i in keep]

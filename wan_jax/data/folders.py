"""Scanning a dataset folder: media, captions and masks matched by file stem, every problem
named. Runs once before training; anything unusable is skipped here with a warning (and counted
in the report) or stops the run with one error that lists the files."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from pathlib import Path

import ml_collections
import tqdm

from wan_jax.data import config as dcfg
from wan_jax.data.captions import apply_trigger
from wan_jax.data.buckets import bucket_for
from wan_jax.model.latent_geometry import WAN21, LatentGeometry
from wan_jax.data.media import (IMAGE_EXTS, VIDEO_EXTS, MediaError, MediaInfo, is_image,
                                is_video, mask_frames, probe, probe_mask)
from wan_jax.data.probe_cache import ProbeCache, default_cache_dir

log = logging.getLogger(__name__)
ASPECT_TOLERANCE = 0.01
SCAN_THREADS = max(1, min(8, os.cpu_count() or 1))


class DataError(ValueError):
  """The dataset cannot be used as configured; raised before training starts."""


@dataclasses.dataclass(frozen=True)
class Item:
  media: Path
  info: MediaInfo
  caption: str
  mask: Path | None  # None: unmasked, or alpha_mask on an image with alpha
  dataset: int
  num_frames: int  # frames this item contributes (1 for images, the snapped count for clips)
  latent: LatentGeometry = WAN21  # the model's: its buckets, weight maps and latent shapes


@dataclasses.dataclass
class ScanReport:
  items: list[Item] = dataclasses.field(default_factory=list)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def skip(self, path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    self.skipped.append((str(path), reason))

  def summary(self) -> str:
    lines = [f"{len(self.items)} items, {len(self.skipped)} skipped"]
    reasons = collections.Counter(r.split(":")[0] for _, r in self.skipped)
    lines += [f"  skipped, {r}: {n}" for r, n in sorted(reasons.items())]
    lines += [f"  {k}: {n}" for k, n in sorted(self.notes.items())]
    return "\n".join(lines)


def _read_caption(media: Path, cfg: ml_collections.ConfigDict, report: ScanReport) -> str | None:
  path = media.with_suffix(dcfg.caption_suffix(cfg))
  if not path.is_file():
    report.notes["items without a caption file (default_caption used)"] += 1
    return cfg.default_caption
  try:
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as e:
    report.skip(media, f"caption not UTF-8: {path} ({e.reason} at byte {e.start})")
    return None
  text = " ".join(text.split())
  if not text:
    log.warning("%s is empty; using default_caption %r", path, cfg.default_caption)
    report.notes["empty caption files (default_caption used)"] += 1
    return cfg.default_caption
  return text


def index_masks(mask_dir: Path) -> dict[str, list[Path]]:
  """Mask candidates by exact stem, in precedence order: a folder of per-frame masks, a video,
  an image. (Exact stems: `a.b.png` is not a mask for `a.png`; names may hold glob characters.)"""
  found: dict[str, list[tuple[int, Path]]] = collections.defaultdict(list)
  for p in mask_dir.iterdir():
    if p.name.startswith("."):
      continue
    if p.is_dir():
      found[p.name].append((0, p))
    elif is_video(p):
      found[p.stem].append((1, p))
    elif is_image(p):
      found[p.stem].append((2, p))
  return {stem: [p for _, p in sorted(c)] for stem, c in found.items()}


def _mask_problem(mask: Path, media: MediaInfo, frames: int, invert: bool,
                  probe_fn) -> str | None:
  """Why a mask cannot be used with this media (decode, aspect, frames, all black), or None."""
  try:
    info = probe_mask(mask, probe_fn)
  except MediaError as e:
    return f"mask cannot be read: {e}"
  if abs(info.width / info.height - media.width / media.height) > (
      ASPECT_TOLERANCE * media.width / media.height):
    return (f"mask aspect differs: {mask} is {info.width}x{info.height}, the media is "
            f"{media.width}x{media.height}")
  if frames > 1 and info.frames > 1 and info.frames != media.frames:
    return f"mask has {info.frames} frames, the clip has {media.frames}: {mask}"
  if not (info.any_below_white if invert else info.any_nonzero):
    return f"mask is all black (nothing to train): {mask}"
  return None


_DEFAULT = object()


def scan_dataset(cfg: ml_collections.ConfigDict, index: int = 0,
                 report: ScanReport | None = None, cache_dir: Path | None | object = _DEFAULT,
                 workers: int = SCAN_THREADS, latent: LatentGeometry = WAN21) -> ScanReport:
  """Items of one dataset entry, appended to `report`; raises DataError for unusable setups.

  Every file is decoded once, on `workers` threads; what was learned is kept in a probe cache
  under `cache_dir` (default: `$WAN_JAX_CACHE` or ~/.cache/wan_jax; None: no cache), so a
  relaunch only decodes files that changed. `latent`: the model's latent geometry (bucket sides
  are multiples of one token's side).
  """
  cache_dir = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
  report = report if report is not None else ScanReport()
  where = f"datasets[{index}]"
  dcfg.validate(cfg, where)
  folder = Path(cfg.folder_path).expanduser()
  if not cfg.folder_path or not folder.is_dir():
    raise DataError(f"{where}.folder_path {str(folder)!r} is not a folder")
  mask_dir = Path(cfg.mask_path).expanduser() if cfg.mask_path else None
  if mask_dir is not None and not mask_dir.is_dir():
    raise DataError(f"{where}.mask_path {str(mask_dir)!r} is not a folder")
  num_frames = latent.snap_frames(int(cfg.num_frames))  # the model's VAE takes 1 + t*k
  if num_frames != int(cfg.num_frames):
    log.warning("%s.num_frames %d is not 4k+1; using %d", where, cfg.num_frames, num_frames)

  files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
  media = [p for p in files if is_image(p) or is_video(p)]
  others = [p for p in files if not (is_image(p) or is_video(p))
            and p.suffix != dcfg.caption_suffix(cfg)]
  if others:
    log.info("%s: ignoring %d files that are neither media nor captions, e.g. %s", folder,
             len(others), others[0].name)
    report.notes["files ignored (not media or captions)"] += len(others)
  if not media:
    raise DataError(f"{folder} holds no images ({' '.join(IMAGE_EXTS)}) or videos "
                    f"({' '.join(VIDEO_EXTS)})")

  masks_by_stem = index_masks(mask_dir) if mask_dir is not None else {}
  cache = ProbeCache(folder, cache_dir)
  to_probe = list(media)
  for path in media:
    first = masks_by_stem.get(path.stem, [None])[0]
    if first is not None:
      to_probe += mask_frames(first) if first.is_dir() else [first]
  cache.warm(to_probe, probe, workers,
             progress=lambda it: tqdm.tqdm(it, total=len(to_probe), unit="file",
                                           desc=f"scanning {folder.name}",
                                           disable=len(to_probe) < 100))
  cached_probe = lambda p: cache.probe(p, probe)
  try:
    _scan_items(cfg, index, report, where, folder, media, mask_dir, masks_by_stem,
                num_frames, cached_probe, latent)
  finally:
    cache.save()
  return report


def _scan_items(cfg, index, report, where, folder, media, mask_dir, masks_by_stem, num_frames,
                cached_probe, latent: LatentGeometry) -> None:
  missing_masks: list[Path] = []
  uncaptioned = 0  # items that train on the blank prompt (no caption, empty default_caption)
  before = len(report.items)
  for path in media:
    try:
      info = cached_probe(path)  # every file decoded once: broken files show now, not mid-run
    except MediaError as e:
      report.skip(path, f"unreadable media: {e}")
      continue
    frames = 1 if is_image(path) else num_frames
    if is_video(path) and info.frames < frames:
      report.skip(path, f"clip too short: {info.frames} frames, num_frames is {frames}")
      continue
    try:
      for r in dcfg.resolutions(cfg):
        bucket_for(info.width, info.height, r, latent.side_multiple)
    except ValueError as e:
      report.skip(path, f"too small: {e}")
      continue
    caption = _read_caption(path, cfg, report)
    if caption is None:
      continue
    caption = apply_trigger(caption, cfg.get("trigger_word"))
    uncaptioned += not caption.strip()
    mask = None
    if mask_dir is not None:
      candidates = masks_by_stem.get(path.stem, [])
      mask = candidates[0] if candidates else None
      if len(candidates) > 1:
        log.warning("%s: several masks %s; using %s", path, [p.name for p in candidates],
                    mask.name)
      if mask is None:
        if cfg.missing_mask == "error":
          missing_masks.append(path)
          continue
        if cfg.missing_mask == "skip":
          report.skip(path, f"no mask in {mask_dir}")
          continue
        report.notes["items trained unmasked (no mask file)"] += 1
      elif problem := _mask_problem(mask, info, frames, bool(cfg.invert_mask), cached_probe):
        report.skip(path, problem)
        continue
    elif cfg.alpha_mask and is_image(path):
      if info.alpha == "none":
        report.notes["alpha_mask set but the image has no alpha (trained unmasked)"] += 1
      elif info.alpha == ("opaque" if cfg.invert_mask else "empty"):
        report.skip(path, "alpha mask is all black after invert_mask (nothing to train)"
                    if cfg.invert_mask else
                    "alpha mask is all black (fully transparent: nothing to train)")
        continue
    item = Item(path, info, caption, mask, index, frames, latent)
    report.items.extend([item] * int(cfg.repeats))
  if missing_masks:
    names = ", ".join(p.name for p in missing_masks[:20])
    raise DataError(f"{len(missing_masks)} items have no mask in {mask_dir}: {names}"
                    f"{' ...' if len(missing_masks) > 20 else ''}. Add the masks, or set "
                    f"{where}.missing_mask to 'unmasked' or 'skip'")
  if len(report.items) == before:
    raise DataError(f"{where} ({folder}): no usable items; {len(report.skipped)} skipped, see the "
                    "warnings above")
  if uncaptioned:
    log.warning("%s (%s): %d of its items have no caption (no %s file beside them and %s."
                "default_caption is empty): they train on the blank prompt; add caption files or "
                "set %s.default_caption", where, folder, uncaptioned, dcfg.caption_suffix(cfg),
                where, where)


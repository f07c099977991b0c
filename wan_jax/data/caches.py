"""Latent and prompt-embedding caches: encode once, train many times without the VAE or umT5.

Three kinds of file, each keyed by a hash of exactly what changes it, so a changed setting
rebuilds only what it touches:
  latents  the VAE posterior's mean and log-variance (un-normalised, as `WanVAE.moments`) of one
           item in one geometry. Key: the media file (path, size, mtime), the bucket, the source
           frames, the resize/crop/flip, the VAE's weights (file identities) and the dtype.
  <task>   what the task derives from the same pixels (image-to-video: `condition`, the encoded
           first frame with its mask channels). Key: as the latents'. Image-to-video from a
           still image (wan_jax/tasks/i2v_images.py) adds, when turned on, degraded copies of
           its condition (key: the latents' plus the copy's number and the recipe's version)
           and the image as a static clip: its latents, weights and blurred condition, keyed
           like any entry of that clip's geometry plus the blur settings.
  first_last_condition  image-to-video with a data set's `last_frame_prob` > 0: a clip's
           condition on its first and last frames (wan_jax/tasks/i2v.py). Key: as the latents'.
           Only clips of such data sets have one: turning the option on encodes these files and
           nothing else, turning it off leaves them unread.
  weights  the latent-grid weight map of a masked item. Key: the mask file, the same geometry,
           invert_mask and mask_min_value (changing mask_min_value re-reads masks, not videos).
  prompts  one caption's umT5 embedding, trimmed to its tokens. Key: the text, the encoder's and
           tokenizer's identities and the token limit. The blank caption (caption dropout) and any
           extra prompts (previews) are cached the same way.

Geometry must be fixed for a latent to be reusable: with caches, crops are centred and frames
evenly spread; random crops and random frame windows are refused. A random flip is kept: both
variants are cached and each draw picks one.

Models are loaded through callables only when something is missing, so a run whose caches are
complete never holds the VAE or umT5 in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
import tqdm

from wan_jax.data.cache_store import DTYPES, CacheError, CacheStore, digest
from wan_jax.data.examples import (Geometry, SkipItem, is_masked, plan_geometry, read_pixels,
                                   read_weights)
from wan_jax.data.folders import DataError, Item
from wan_jax.data.media import MediaError
from wan_jax.model.latent_geometry import WAN21
from wan_jax.tasks import TEXT_TO_VIDEO, Task
from wan_jax.tasks.i2v_images import (DEGRADE_VERSION, ImageTraining, clip_condition_frame, degrade,
                                      seed_of_key)

log = logging.getLogger(__name__)
VERSION = 1  # bump when what a cache file holds changes
PROMPT_BATCH = 8
BLANK = ""


@dataclasses.dataclass(frozen=True)
class CacheSettings:
  """Where the caches live and what identifies the encoders that fill them."""

  root: Path
  vae_id: str  # identity of the VAE weights (`files_id` of its checkpoint, or a demo tag)
  text_id: str  # identity of umT5 + tokenizer
  text_len: int = 512  # tokens per prompt (Wan pads to 512)
  dtype: str = "float32"  # storage dtype of latents and embeddings (float32 | float16)

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise ValueError(f"cache dtype must be one of {DTYPES}, got {self.dtype!r}")


def files_id(path: str | os.PathLike) -> str:
  """Identity of a checkpoint (file or folder) from every file's name, size and mtime."""
  root = Path(path).expanduser().resolve()
  if not root.exists():
    raise FileNotFoundError(f"{root} does not exist")
  files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  return digest([[str(p.relative_to(root.parent)), p.stat().st_size, p.stat().st_mtime_ns]
                 for p in files])


def _stamp(path: Path) -> list:
  """(path, size, mtime) of a file, or of every image in a per-frame mask folder."""
  path = Path(path).resolve()
  if path.is_dir():
    return [_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]
  st = path.stat()
  return [str(path), st.st_size, st.st_mtime_ns]


def _geometry_json(geo: Geometry) -> list:
  c = geo.crop
  return [list(geo.bucket), list(geo.indices or []), list(c.resize_hw), c.top, c.left, c.flip]


def flip_variants(cfg: ml_collections.ConfigDict) -> tuple[bool, ...]:
  p = float(cfg.flip_prob)
  return (False,) if p <= 0 else (True,) if p >= 1 else (False, True)


def check_cacheable(cfg: ml_collections.ConfigDict, where: str) -> None:
  """Random crops and frame windows change every epoch: their latents cannot be cached."""
  if cfg.random_crop:
    raise DataError(f"{where}.random_crop changes the crop every epoch, so its latents cannot be "
                    "cached; turn it off (flip_prob still works with caches)")
  if cfg.frame_selection != "evenly":
    raise DataError(f"{where}.frame_selection={cfg.frame_selection!r} draws new frames every "
                    "epoch, so its latents cannot be cached; use 'evenly'")


@dataclasses.dataclass
class Variant:
  """One cached version (flip) of one entry."""

  geometry: Geometry
  latent_key: str
  weights_key: str | None  # None: unmasked (weights are ones)
  pixel_keys: dict[str, str] = dataclasses.field(default_factory=dict)  # task's kind -> key
  # A still image for image-to-video: degraded copies of its condition (kind -> key, per copy),
  # and the image as a static clip (its own geometry and files).
  degraded_keys: tuple[dict[str, str], ...] = ()
  clip: Variant | None = None
  # A clip that may train first-last frame: its condition on both ends (kind -> key).
  first_last_keys: dict[str, str] = dataclasses.field(default_factory=dict)

  def files(self) -> list[tuple[str, str]]:
    """(kind, key) of every file this variant reads, its static clip's included."""
    out = [("latents", self.latent_key), *self.pixel_keys.items(), *self.first_last_keys.items()]
    if self.weights_key is not None:
      out.append(("weights", self.weights_key))
    out += [kk for copy in self.degraded_keys for kk in copy.items()]
    return out + (self.clip.files() if self.clip is not None else [])


@dataclasses.dataclass
class CachePlan:
  """Every key a run needs; what is missing is built by `build_caches`."""

  store: CacheStore
  settings: CacheSettings
  variants: list[dict[bool, Variant]]  # per entry: flip -> variant
  prompt_keys: dict[str, str]  # caption -> key (includes BLANK and extra prompts)
  failed: set[int] = dataclasses.field(default_factory=set)  # entries that could not be encoded
  task: Task = TEXT_TO_VIDEO
  images: ImageTraining | None = None  # how still images train image-to-video

  @property
  def pixel_kinds(self) -> tuple[str, ...]:
    """Kinds encoded from an entry's pixels: the latents, then what the task derives."""
    return ("latents", *self.task.pixel_arrays, *self.task.first_last_arrays)

  def keys(self, kind: str) -> dict[str, tuple[int, bool]]:
    """Each distinct key of a kind -> the first (entry, flip) that needs it (an item with
    `repeats` is several entries, one file)."""
    out: dict[str, tuple[int, bool]] = {}
    for i, by_flip in enumerate(self.variants):
      for flip, v in by_flip.items():
        for k, key in v.files():
          if k == kind:
            out.setdefault(key, (i, flip))
    return out

  def missing(self) -> tuple[list[tuple[int, bool]], list[tuple[int, bool]], list[str]]:
    """(entry/flip pairs with a pixel-derived file missing: latents or the task's, ... whose
    weights are, captions), one pair per file to encode."""
    lat, wts = set(), set()
    for i, by_flip in enumerate(self.variants):
      for flip, v in by_flip.items():
        for kind, key in v.files():
          if not self.store.has(kind, key):
            (wts if kind == "weights" else lat).add((i, flip))
    lat, wts = sorted(lat), sorted(wts)
    texts = [t for t, k in self.prompt_keys.items() if not self.store.has("prompts", k)]
    return lat, wts, texts

  def fail_shared(self) -> None:
    """Marks every entry that shares a file with a failed one (the repeats of a broken item)."""
    files = lambda v: {key for _, key in v.files()}
    bad = {k for i in self.failed for v in self.variants[i].values() for k in files(v)}
    self.failed |= {i for i, by_flip in enumerate(self.variants)
                    if any(files(v) & bad for v in by_flip.values())}

  def repair_prompts(self, texts: Sequence[str]) -> list[str]:
    """Reads the embeddings every row or preview may need (the blank caption, the preview
    prompts); a damaged one is deleted, so it counts as missing and is rebuilt now. Returns
    the warnings, one per damaged file."""
    damaged = []
    for text in texts:
      if self.store.has("prompts", self.prompt_keys[text]):
        try:
          self.prompt(text)
        except CacheError as e:
          damaged.append(str(e))
    return damaged

  def prompt(self, text: str) -> np.ndarray:
    """A cached embedding [tokens, D] (float32); the caption must be part of the plan."""
    if text not in self.prompt_keys:
      raise KeyError(f"prompt {text!r} is not in the cache plan (pass it as an extra prompt)")
    return self.store.read("prompts", self.prompt_keys[text])["embedding"].astype(np.float32)


def plan_caches(items: Sequence[tuple[Item, int]], datasets: Sequence[ml_collections.ConfigDict],
                settings: CacheSettings, extra_prompts: Sequence[str] = (),
                task: Task = TEXT_TO_VIDEO, images: ImageTraining | None = None) -> CachePlan:
  """Keys for every (item, resolution) entry and every caption; reads no media. `images`: how
  one-frame items train a task that conditions on pixels (image-to-video)."""
  for i, cfg in enumerate(datasets):
    check_cacheable(cfg, f"datasets[{i}]")
  variants, planned = [], {}
  for item, resolution in items:
    if (item, resolution) in planned:  # a repeated item: the same files
      variants.append(planned[item, resolution])
      continue
    cfg = datasets[item.dataset]
    media = _stamp(item.media)
    mask = (_stamp(item.mask) if item.mask is not None else media) if is_masked(item, cfg) else None
    by_flip = {}
    for flip in flip_variants(cfg):
      geo = plan_geometry(item, resolution, cfg, np.random.default_rng(0), flip=flip)

      def variant(geo: Geometry, own: Sequence[str], recipe: list) -> Variant:
        g = _geometry_json(geo)
        lkey = digest([VERSION, "latents", media, g, settings.vae_id, settings.dtype])
        # the weight grid's cell size joins the key where it is not the A14B's 8 pixels (so
        # the A14B's existing keys stand)
        cell = [] if item.latent.spatial == WAN21.spatial else [f"cell{item.latent.spatial}"]
        wkey = None if mask is None else digest(
            [VERSION, "weights", mask, g, bool(cfg.invert_mask), float(cfg.mask_min_value),
             item.mask is None, *cell])
        pkeys = {kind: digest([VERSION, kind, *recipe, media, g, settings.vae_id, settings.dtype])
                 for kind in own}
        return Variant(geo, lkey, wkey, pkeys)

      v = variant(geo, task.own_pixel_arrays(item), [])
      if item.num_frames > 1 and float(cfg.get("last_frame_prob", 0.0)) > 0:
        g = _geometry_json(geo)
        v.first_last_keys = {kind: digest([VERSION, kind, media, g, settings.vae_id,
                                           settings.dtype]) for kind in task.first_last_arrays}
      if images is not None and task.pixel_arrays and item.num_frames == 1:
        g = _geometry_json(geo)
        v.degraded_keys = tuple(
            {kind: digest([VERSION, kind, "degraded", DEGRADE_VERSION, j, media, g,
                           settings.vae_id, settings.dtype]) for kind in task.pixel_arrays}
            for j in range(images.degraded_copies))
        if images.clip_training:
          clip_geo = dataclasses.replace(geo, bucket=(images.clip_num_frames, *geo.bucket[1:]))
          v.clip = variant(clip_geo, tuple(task.pixel_arrays),
                           ["clip", images.clip_blur_sigma, images.clip_downscale_factor])
      by_flip[flip] = v
    variants.append(by_flip)
    planned[item, resolution] = by_flip
  texts = {BLANK, *extra_prompts, *(item.caption for item, _ in items)}
  prompt_keys = {t: digest([VERSION, "prompts", t, settings.text_id, settings.text_len,
                            settings.dtype]) for t in sorted(texts)}
  return CachePlan(CacheStore(settings.root), settings, variants, prompt_keys, task=task,
                   images=images)


@dataclasses.dataclass
class BuildReport:
  latents_built: int = 0
  pixel_built: dict[str, int] = dataclasses.field(default_factory=dict)  # the task's kinds
  weights_built: int = 0
  prompts_built: int = 0
  reused: int = 0
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)
  seconds: float = 0.0
  damaged: int = 0  # files found damaged before the pass (deleted, then built again)

  def summary(self) -> str:
    repaired = f" ({self.damaged} of them replacing damaged files)" if self.damaged else ""
    task = "".join(f"{n} {_plural(kind)}, " for kind, n in sorted(self.pixel_built.items()))
    return (f"caches: {self.reused} files reused, built {self.latents_built} latents, {task}"
            f"{self.weights_built} weight maps, {self.prompts_built} prompt embeddings"
            f"{repaired} in {self.seconds:.1f} s; {len(self.failed)} items could not be encoded")


def _plural(kind: str) -> str:
  """'condition' -> 'conditions', 'first_last_condition' -> 'first-last conditions'."""
  *head, noun = kind.split("_")
  return "-".join(head) + (" " if head else "") + noun + "s"


def build_caches(plan: CachePlan, items: Sequence[tuple[Item, int]],
                 datasets: Sequence[ml_collections.ConfigDict],
                 load_vae: Callable[[], Any], load_text: Callable[[], tuple[Any, Any]],
                 progress: bool = True,
                 missing: tuple[list, list, list] | None = None) -> BuildReport:
  """Builds what is missing. `load_vae()` -> WanVAE and `load_text()` -> (tokenizer, UMT5Encoder)
  are called only if latents or prompts are missing; items that fail to decode are logged by
  name, added to `plan.failed` and left out of training. `missing`: `plan.missing()` if the
  caller already has it."""
  start = time.time()
  lat, wts, texts = missing or plan.missing()
  absent = sum(not plan.store.has(kind, key) for kind in (*plan.pixel_kinds, "weights")
               for key in plan.keys(kind))
  total = sum(len(plan.keys(k)) for k in (*plan.pixel_kinds, "weights")) + len(plan.prompt_keys)
  report = BuildReport(reused=total - absent - len(texts))
  bar = lambda it, n, desc: tqdm.tqdm(it, total=n, desc=desc, unit="item",
                                      disable=not progress or n == 0)
  if lat:
    _build_latents(plan, items, datasets, lat, load_vae, report, bar)
  for i, flip in bar(wts, len(wts), "caching weight maps"):
    if i in plan.failed:
      continue
    item, _ = items[i]
    v = plan.variants[i][flip]
    todo = [(x.geometry, x.weights_key) for x in (v, v.clip) if x is not None
            and x.weights_key is not None and not plan.store.has("weights", x.weights_key)]
    try:
      maps = [(key, read_weights(item, geo, datasets[item.dataset])) for geo, key in todo]
    except (SkipItem, MediaError, ValueError, OSError) as e:
      _fail(plan, report, i, item, e)
      continue
    for key, weights in maps:
      plan.store.write("weights", key, {"weights": weights}, {"mask": str(item.mask or item.media)})
      report.weights_built += 1
  if texts:
    _build_prompts(plan, texts, load_text, report, bar)
  plan.fail_shared()
  report.seconds = time.time() - start
  return report


def _fail(plan: CachePlan, report: BuildReport, i: int, item: Item, e: Exception) -> None:
  if not isinstance(e, SkipItem):
    log.warning("skipping %s: %s", item.media, e)
  plan.failed.add(i)
  report.failed.append((str(item.media), str(e)))


def _encodings(plan: CachePlan, v: Variant, video: np.ndarray
               ) -> list[tuple[str, dict[str, str], np.ndarray]]:
  """What to encode for one variant from its pixels [1, F, H, W, 3] in [-1, 1]: (encoder,
  kind -> key of the files it fills, input video); 'moments' fills latents, 'task' the task's
  arrays, 'first_last' a clip's condition on both ends. A still image's degraded copies and
  static clip come from its one frame."""
  out = [("moments", {"latents": v.latent_key}, video), ("task", v.pixel_keys, video),
         ("first_last", v.first_last_keys, video)]
  frame = video[0, 0]
  for keys in v.degraded_keys:
    rng = np.random.default_rng(seed_of_key(next(iter(keys.values()))))
    out.append(("task", keys, degrade(frame, rng)[None, None]))
  if v.clip is not None:
    images = plan.images
    frames = v.clip.geometry.bucket[0]
    start = clip_condition_frame(frame, images.clip_blur_sigma, images.clip_downscale_factor)
    out += [("moments", {"latents": v.clip.latent_key}, np.repeat(video, frames, axis=1)),
            # The condition reads the first frame and the frame count (first frame + zeros).
            ("task", v.clip.pixel_keys, np.repeat(start[None, None], frames, axis=1))]
  return out


def _build_latents(plan, items, datasets, todo, load_vae, report, bar) -> None:
  """Encodes each (entry, flip) in `todo` once: its latents and the task's arrays (and a still
  image's alternatives), whichever are missing, from one read of its pixels."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  vae = load_vae()
  moments = nnx.jit(lambda vae, video: vae.moments(video))
  encoders = {"task": nnx.jit(lambda vae, video: plan.task.encode_pixels(vae, video)),
              "first_last": nnx.jit(lambda vae, video: plan.task.encode_first_last(vae, video))}
  dtype = np.dtype(plan.settings.dtype)
  # One bucket after another, so each shape compiles once and stays hot.
  todo = sorted(todo, key=lambda ef: (plan.variants[ef[0]][ef[1]].geometry.bucket, ef))
  for i, flip in bar(todo, len(todo), "caching latents"):
    item, _ = items[i]
    v = plan.variants[i][flip]
    try:
      pixels = read_pixels(item, v.geometry)
    except (MediaError, ValueError, OSError) as e:
      _fail(plan, report, i, item, e)
      continue
    video = pixels[None].astype(np.float32) / 127.5 - 1.0
    files = []  # (kind, key, arrays)
    for encoder, keys, clip in _encodings(plan, v, video):
      want = {kind: key for kind, key in keys.items() if not plan.store.has(kind, key)}
      if not want:
        continue
      if encoder == "moments":
        mean, logvar = jax.device_get(moments(vae, jnp.asarray(clip)))
        files.append(("latents", want["latents"], {"mean": mean[0], "logvar": logvar[0]}))
      else:
        arrays = jax.device_get(encoders[encoder](vae, jnp.asarray(clip)))
        files += [(kind, key, {kind: arrays[kind][0]}) for kind, key in want.items()]
    if not all(np.isfinite(a).all() for _, _, arrays in files for a in arrays.values()):
      _fail(plan, report, i, item, ValueError("the VAE returned non-finite latents"))
      continue
    for kind, key, arrays in files:
      plan.store.write(kind, key, {k: a.astype(dtype) for k, a in arrays.items()},
                       {"media": str(item.media), "bucket": str(v.geometry.bucket)})
      if kind == "latents":
        report.latents_built += 1
      else:
        report.pixel_built[kind] = report.pixel_built.get(kind, 0) + 1
  del vae


def _build_prompts(plan, texts, load_text, report, bar) -> None:
  from wan_jax.model.prompts import encode_tokens, tokenize

  tokenizer, encoder = load_text()
  dtype = np.dtype(plan.settings.dtype)
  batches = [texts[i:i + PROMPT_BATCH] for i in range(0, len(texts), PROMPT_BATCH)]
  with bar(None, len(texts), "caching prompts") as pbar:
    for batch in batches:
      padded = batch + [BLANK] * (PROMPT_BATCH - len(batch))  # one compiled batch size
      ids, mask = tokenize(padded, tokenizer, plan.settings.text_len)
      emb = np.asarray(encode_tokens(encoder, ids, mask))
      for j, text in enumerate(batch):
        n = max(1, int(mask[j].sum()))
        plan.store.write("prompts", plan.prompt_keys[text], {"embedding": emb[j, :n].astype(dtype)},
                         {"text": text})
        report.prompts_built += 1
      pbar.update(len(batch))
  del encoder


def read_variant(plan: CachePlan, entry: int, flip: bool, clip: bool = False,
                 degraded: int | None = None, first_last: bool = False) -> dict[str, np.ndarray]:
  """(mean, logvar, weights and the task's arrays) of one cached entry as float32; CacheError
  names a bad file. A still image for image-to-video reads as its static `clip`, or with its
  `degraded` copy number n as condition; a clip with `first_last` reads its condition on its
  first and last frames under the task's name (`condition`); a task array the entry has no file
  for is zeros."""
  v = plan.variants[entry].get(flip) or next(iter(plan.variants[entry].values()))
  if clip:
    v = v.clip
  lat = plan.store.read("latents", v.latent_key)
  out = {"latent_mean": lat["mean"].astype(np.float32),
         "latent_logvar": lat["logvar"].astype(np.float32)}
  if v.weights_key is None:
    out["weights"] = np.ones(out["latent_mean"].shape[:3], np.float32)
  else:
    out["weights"] = plan.store.read("weights", v.weights_key)["weights"]
  arrays = v.pixel_keys if degraded is None else v.degraded_keys[degraded]
  named = {kind: kind for kind in arrays}
  if first_last:
    if not v.first_last_keys:
      raise ValueError(f"entry {entry} has no first-last-frame condition in the cache plan (a "
                       "clip of a data set with last_frame_prob > 0 has)")
    arrays, named = v.first_last_keys, plan.task.first_last_arrays
  for kind, key in arrays.items():
    out[named[kind]] = plan.store.read(kind, key)[kind].astype(np.float32)
  return {**plan.task.empty_arrays(out["weights"].shape), **out}


__all__ = ["BLANK", "BuildReport", "CacheError", "CachePlan", "CacheSettings", "build_caches",
           "check_cacheable", "files_id", "plan_caches", "read_variant"]

"""One training example from one scanned item: frames picked, resized into its bucket, cropped,
flipped, and its mask turned into latent-grid weights with exactly the same geometry."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import ml_collections
import numpy as np

from wan_jax.data.buckets import Crop, apply_crop, bucket_for, plan_crop
from wan_jax.data.folders import Item
from wan_jax.data.frames import select_frames
from wan_jax.data.media import MediaError, is_image, read_image, read_mask, read_video
from wan_jax.data.weight_maps import weight_map

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Example:
  pixels: np.ndarray  # uint8 [F, H, W, 3], F = 4k+1, H and W multiples of 16
  weights: np.ndarray  # float32 [F', H/8, W/8] in [mask_min_value, 1]; ones when unmasked
  caption: str
  item: Item


class SkipItem(ValueError):
  """This item cannot be used (all-black mask, frames that fail to decode); already logged."""


def bucket_of(item: Item, resolution: int) -> tuple[int, int, int]:
  """(frames, height, width): examples sharing it can share a batch."""
  return (item.num_frames, *bucket_for(item.info.width, item.info.height, resolution,
                                       item.latent.side_multiple))


def load_example(item: Item, resolution: int, cfg: ml_collections.ConfigDict,
                 rng: np.random.Generator) -> Example:
  """Decodes and shapes one item; raises SkipItem (with a warning naming the file) if unusable.

  The scan has already decoded every file once, so this is for what changes between runs (a file
  edited or removed mid-training); nothing else escapes, so a worker never dies on one file.
  """
  try:
    return _load(item, resolution, cfg, rng)
  except (MediaError, ValueError, OSError) as e:
    if isinstance(e, SkipItem):
      raise
    log.warning("skipping %s: %s", item.media, e)
    raise SkipItem(f"{item.media}: {e}") from e


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Which frames, and how they are resized, cropped and flipped into the bucket.

  Decided from the probed size alone (no decoding), so the latent cache can key on it and the
  weight map can be rebuilt from the mask without decoding the media.
  """

  bucket: tuple[int, int, int]  # (frames, height, width)
  indices: tuple[int, ...] | None  # source frames of a clip; None for an image
  crop: Crop


def plan_geometry(item: Item, resolution: int, cfg: ml_collections.ConfigDict,
                  rng: np.random.Generator, flip: bool | None = None) -> Geometry:
  """Frames and crop for one draw; `flip` forces the flip (the cache stores both variants)."""
  frames, bh, bw = bucket_of(item, resolution)
  indices = None
  if not is_image(item.media):
    picked, note = select_frames(item.info.frames, frames, cfg.frame_selection,
                                 item.info.fps, cfg.fps, rng)
    if note:
      log.warning("%s: %s", item.media, note)
    indices = tuple(picked)
  crop = plan_crop(item.info.height, item.info.width, (bh, bw), rng, bool(cfg.random_crop),
                   float(cfg.flip_prob))
  if flip is not None:
    crop = dataclasses.replace(crop, flip=flip)
  return Geometry((frames, bh, bw), indices, crop)


def read_pixels(item: Item, geo: Geometry) -> np.ndarray:
  """uint8 [F, H, W, 3] in the bucket's shape; an image in a bucket of F > 1 frames is a static
  clip (its frame F times)."""
  if geo.indices is None:
    pixels, _ = read_image(item.media)
  else:
    pixels = read_video(item.media, geo.indices)
  _check_size(item, pixels.shape[1:3])
  return _static(np.ascontiguousarray(apply_crop(pixels, geo.crop, geo.bucket[1:])), geo)


def _static(frames: np.ndarray, geo: Geometry) -> np.ndarray:
  """One frame repeated to the bucket's frame count (a still image as a static clip)."""
  if frames.shape[0] == 1 and geo.bucket[0] > 1:
    return np.repeat(frames, geo.bucket[0], axis=0)
  return frames


def read_weights(item: Item, geo: Geometry, cfg: ml_collections.ConfigDict) -> np.ndarray:
  """float32 [F', H/s, W/s] latent-grid weights (ones when unmasked); SkipItem if all black."""
  frames, bh, bw = geo.bucket
  mask = None
  if item.mask is not None:
    mask = read_mask(item.mask, geo.indices)
  elif cfg.alpha_mask and geo.indices is None:
    _, mask = read_image(item.media)
  if mask is None:
    return np.ones(item.latent.grid(frames, bh, bw), np.float32)
  mask = apply_crop(mask, geo.crop, (bh, bw))  # resized from its own size (same aspect) in one step
  weights = weight_map(mask, frames, float(cfg.mask_min_value), bool(cfg.invert_mask),
                       item.latent.spatial, item.latent.temporal)
  if weights is None:
    log.warning("skipping %s: mask %s is all black", item.media, item.mask or "(alpha)")
    raise SkipItem(f"all-black mask for {item.media}")
  return weights


def read_start_image(path: Path, height: int, width: int) -> np.ndarray:
  """A start image (image-to-video previews and sampling) as uint8 [height, width, 3], resized
  and centre-cropped as training crops are."""
  pixels, _ = read_image(Path(path))
  crop = plan_crop(pixels.shape[1], pixels.shape[2], (height, width), np.random.default_rng(0),
                   False, 0.0)
  return apply_crop(pixels, crop, (height, width))[0]


def is_masked(item: Item, cfg: ml_collections.ConfigDict) -> bool:
  """Whether the item's weights come from a mask (else they are all ones)."""
  return item.mask is not None or (bool(cfg.alpha_mask) and item.info.alpha != "none"
                                   and is_image(item.media))


def _check_size(item: Item, height_width: tuple[int, ...]) -> None:
  if tuple(height_width) != (item.info.height, item.info.width):
    raise MediaError(f"{item.media} changed since the scan: now {height_width[1]}x"
                     f"{height_width[0]}, was {item.info.width}x{item.info.height}")


def _load(item: Item, resolution: int, cfg: ml_collections.ConfigDict,
          rng: np.random.Generator) -> Example:
  geo = plan_geometry(item, resolution, cfg, rng)
  pixels = read_pixels(item, geo)
  return Example(pixels, read_weights(item, geo, cfg), item.caption, item)

"""One training example from one scanned item: frames picked, resized into its bucket, cropped,
flipped, and its mask turned into latent-grid weights with exactly the same geometry."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from wan_jax.data.buckets import apply_crop, bucket_for, plan_crop
from wan_jax.data.folders import Item
from wan_jax.data.frames import select_frames
from wan_jax.data.media import MediaError, is_image, read_image, read_mask, read_video
from wan_jax.data.weight_maps import latent_frames, weight_map

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
  return (item.num_frames, *bucket_for(item.info.width, item.info.height, resolution))


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


def _load(item: Item, resolution: int, cfg: ml_collections.ConfigDict,
          rng: np.random.Generator) -> Example:
  frames, bh, bw = bucket_of(item, resolution)
  alpha = None
  if is_image(item.media):
    pixels, alpha = read_image(item.media)
    indices = None
  else:
    indices, note = select_frames(item.info.frames, frames, cfg.frame_selection,
                                  item.info.fps, cfg.fps, rng)
    if note:
      log.warning("%s: %s", item.media, note)
    pixels = read_video(item.media, indices)
  if item.mask is not None:
    mask = read_mask(item.mask, indices)
  elif cfg.alpha_mask and alpha is not None:
    mask = alpha
  else:
    mask = None

  height, width = pixels.shape[1:3]
  crop = plan_crop(height, width, (bh, bw), rng, bool(cfg.random_crop), float(cfg.flip_prob))
  pixels = apply_crop(pixels, crop, (bh, bw))
  if mask is None:
    weights = np.ones((latent_frames(frames), bh // 8, bw // 8), np.float32)
  else:
    mask = apply_crop(mask, crop, (bh, bw))  # resized from its own size (same aspect) in one step
    weights = weight_map(mask, frames, float(cfg.mask_min_value), bool(cfg.invert_mask))
    if weights is None:
      log.warning("skipping %s: mask %s is all black", item.media, item.mask or "(alpha)")
      raise SkipItem(f"all-black mask for {item.media}")
  return Example(np.ascontiguousarray(pixels), weights, item.caption, item)

"""Aspect-ratio buckets: area-based, sides a multiple of one token's side, never upscaling.

For a target resolution r, an item of w x h gets the largest bucket of area <= r*r (capped at
the item's own area) with its aspect ratio, sides rounded down to multiples of `multiple` (16
pixels for the A14B, 32 for the TI2V-5B: the model's LatentGeometry.side_multiple). The item is
then resized (down) to cover the bucket and cropped; the mask gets the same resize, crop and flip.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np
from PIL import Image

MULTIPLE = 16  # the A14B's (Wan 2.1 VAE's 8 pixels x patch 2)


def bucket_for(width: int, height: int, resolution: int,
               multiple: int = MULTIPLE) -> tuple[int, int]:
  """(bucket height, bucket width) for an item at one target resolution."""
  m = multiple
  scale = min(1.0, math.sqrt(resolution * resolution / (width * height)))
  bw = max(m, int(width * scale) // m * m)
  bh = max(m, int(height * scale) // m * m)
  # Raising a short side to one multiple (extreme aspect ratios) must not lift the area over r*r.
  cap = resolution * resolution
  if bw * bh > cap:
    if bh == m:
      bw = max(m, cap // bh // m * m)
    else:
      bh = max(m, cap // bw // m * m)
  if bw > width or bh > height:
    raise ValueError(f"{width}x{height} is smaller than the smallest bucket ({m}px)")
  return bh, bw


@dataclasses.dataclass(frozen=True)
class Crop:
  """The geometry applied identically to pixels and mask."""

  resize_hw: tuple[int, int]
  top: int
  left: int
  flip: bool


def plan_crop(height: int, width: int, bucket_hw: tuple[int, int], rng: np.random.Generator,
              random_crop: bool, flip_prob: float) -> Crop:
  bh, bw = bucket_hw
  scale = max(bh / height, bw / width)  # <= 1: buckets never exceed the item
  rh, rw = max(bh, round(height * scale)), max(bw, round(width * scale))
  if random_crop:
    top, left = int(rng.integers(rh - bh + 1)), int(rng.integers(rw - bw + 1))
  else:
    top, left = (rh - bh) // 2, (rw - bw) // 2
  return Crop((rh, rw), top, left, bool(rng.random() < flip_prob))


def apply_crop(frames_FxHxWxC: np.ndarray, crop: Crop, bucket_hw: tuple[int, int]) -> np.ndarray:
  """Resizes (Lanczos for uint8 pixels, area-like box filter for float masks), crops, flips."""
  rh, rw = crop.resize_hw
  out = []
  for frame in frames_FxHxWxC:
    if frame.dtype == np.uint8:
      img = Image.fromarray(frame).resize((rw, rh), Image.LANCZOS)
    else:
      img = Image.fromarray(frame.astype(np.float32), mode="F").resize((rw, rh), Image.BOX)
    out.append(np.asarray(img))
  arr = np.stack(out)[:, crop.top:crop.top + bucket_hw[0], crop.left:crop.left + bucket_hw[1]]
  return arr[:, :, ::-1] if crop.flip else arr


def batch_counts(bucket_keys: Sequence[Hashable], batch_size: int) -> tuple[int, int]:
  """(batches, filler slots) that bucket_batches makes: fixed by the bucket sizes alone."""
  sizes = collections.Counter(bucket_keys).values()
  return sum(-(-n // batch_size) for n in sizes), sum(-n % batch_size for n in sizes)


def bucket_batches(bucket_keys: Sequence[Hashable], batch_size: int, rng: np.random.Generator
                   ) -> list[list[int]]:
  """Batches of item indices, each from one bucket, members drawn at random, grouped by bucket
  (shuffling the batch order is the pipeline's job).

  A bucket whose size is not a multiple of batch_size ends with a short batch; it is filled with
  other items of the same bucket (drawn at random), so shapes stay fixed and no item is dropped.
  """
  by_bucket: dict[Hashable, list[int]] = defaultdict(list)
  for i, key in enumerate(bucket_keys):
    by_bucket[key].append(i)
  batches = []
  for key in sorted(by_bucket, key=str):
    members = list(rng.permutation(by_bucket[key]))
    for start in range(0, len(members), batch_size):
      batch = [int(i) for i in members[start:start + batch_size]]
      short = batch_size - len(batch)
      if short:
        fill = rng.choice(members, size=short, replace=short > len(members))
        batch += [int(i) for i in fill]
      batches.append(batch)
  return batches

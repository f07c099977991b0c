"""Weight maps, buckets, frame selection and batching: the numbers, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wan_jax.data.buckets import apply_crop, batch_counts, bucket_batches, bucket_for, plan_crop
from wan_jax.data.frames import ClipTooShort, select_frames
from wan_jax.model.latent_geometry import WAN21
from wan_jax.data.weight_maps import weight_map


def test_left_half_white_mask():
  mask = np.zeros((1, 16, 40), np.float32)
  mask[:, :, :20] = 1.0  # 20 px: latent columns 0, 1 white, column 2 straddles (px 16..23)
  w = weight_map(mask, num_frames=1)
  assert w.shape == (1, 2, 5)
  np.testing.assert_allclose(w[0, 0], [1.0, 1.0, 0.5, 0.0, 0.0])


def test_mask_min_value_and_invert():
  mask = np.zeros((1, 8, 16), np.float32)
  mask[:, :, :8] = 1.0
  np.testing.assert_allclose(weight_map(mask, 1, mask_min_value=0.1)[0, 0], [1.0, 0.1])
  np.testing.assert_allclose(weight_map(mask, 1, invert=True)[0, 0], [0.0, 1.0])


def test_per_frame_masks_pool_like_the_vae_groups_frames():
  mask = np.zeros((9, 8, 8), np.float32)
  mask[0] = 1.0  # latent frame 0 = frame 0 alone
  mask[1] = 1.0  # latent frame 1 = frames 1..4: one of four white
  mask[5:7] = 1.0  # latent frame 2 = frames 5..8: two of four white
  w = weight_map(mask, num_frames=9)
  np.testing.assert_allclose(w[:, 0, 0], [1.0, 0.25, 0.5])


def test_one_mask_frame_covers_every_latent_frame():
  mask = np.ones((1, 8, 8), np.float32)
  assert weight_map(mask, num_frames=81).shape == (21, 1, 1)


def test_all_black_mask_gives_none():
  assert weight_map(np.zeros((1, 8, 8), np.float32), 1) is None
  assert weight_map(np.ones((1, 8, 8), np.float32), 1, invert=True) is None


@pytest.mark.parametrize("w,h,r", [(1920, 1080, 512), (1080, 1920, 768), (640, 480, 1024),
                                   (333, 517, 256), (5000, 100, 512)])
def test_buckets_never_upscale_and_snap_to_16(w, h, r):
  bh, bw = bucket_for(w, h, r)
  assert bh % 16 == 0 and bw % 16 == 0
  assert bh <= h and bw <= w
  assert bh * bw <= r * r
  assert abs(bw / bh - w / h) / (w / h) < 0.25


def test_bucket_of_a_large_landscape_image():
  assert bucket_for(1920, 1080, 512) == (384, 672)


def test_crop_applies_identically_to_pixels_and_mask():
  rng = np.random.default_rng(0)
  pixels = np.zeros((1, 90, 160, 3), np.uint8)
  pixels[:, :, :40] = 255
  mask = (pixels[..., 0] / 255.0).astype(np.float32)
  crop = plan_crop(90, 160, (64, 112), rng, random_crop=True, flip_prob=1.0)
  assert crop.flip
  p = apply_crop(pixels, crop, (64, 112))
  m = apply_crop(mask, crop, (64, 112))
  assert p.shape == (1, 64, 112, 3) and m.shape == (1, 64, 112)
  row, mrow = p[0, 0, :, 0] / 255.0, m[0, 0]
  assert row[-1] > 0.9 and row[0] < 0.1  # flipped: the white band is now on the right
  clear = np.abs(row - 0.5) > 0.3  # away from the band's edge, where the filters differ
  np.testing.assert_array_equal(row[clear] > 0.5, mrow[clear] > 0.5)
  assert np.abs(row - mrow).max() < 0.5


def test_frame_counts_and_selection():
  assert [WAN21.snap_frames(n) for n in (1, 4, 5, 80, 81)] == [1, 1, 5, 77, 81]
  rng = np.random.default_rng(0)
  idx, note = select_frames(100, 5, "evenly", 30.0, 16.0, rng)
  assert idx == [0, 25, 50, 74, 99] and note is None
  idx, note = select_frames(100, 5, "window", 32.0, 16.0, rng)
  assert note is None and np.all(np.diff(idx) == 2)  # 32 fps source, 16 fps target
  idx, note = select_frames(9, 9, "window", 32.0, 16.0, rng)
  assert idx == list(range(9)) and "shorter than" in note
  with pytest.raises(ClipTooShort):
    select_frames(4, 5, "evenly", 30.0, 16.0, rng)


def test_batches_share_a_bucket_and_keep_every_item():
  keys = [(1, 64, 64)] * 5 + [(1, 32, 96)] * 3 + [(5, 64, 64)]
  batches = bucket_batches(keys, 2, np.random.default_rng(0))
  assert all(len(b) == 2 and len({keys[i] for i in b}) == 1 for b in batches)
  assert set().union(*batches) == set(range(len(keys)))
  # 5 -> 3 batches (1 filler), 3 -> 2 (1), 1 -> 1 (1)
  assert batch_counts(keys, 2) == (len(batches), 3) == (6, 3)
  assert sum(len(b) for b in batches) - len(keys) == 3


def test_extreme_aspect_ratios_keep_the_area_cap():
  bh, bw = bucket_for(10000, 20, 64)
  assert bh == 16 and bh * bw <= 64 * 64


def test_window_below_the_target_fps_takes_consecutive_frames():
  idx, note = select_frames(100, 9, "window", 8.0, 16.0, np.random.default_rng(0))
  assert np.all(np.diff(idx) == 1) and "below the target" in note

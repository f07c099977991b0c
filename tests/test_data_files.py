"""Reading real files made here (PNG, JPEG with EXIF rotation, WebP, BMP, MP4, GIF), scanning a
messy folder, and loading examples whose masks follow the pixels."""

from __future__ import annotations

import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from wan_jax.data.config import dataset_config
from wan_jax.data.examples import SkipItem, load_example
from wan_jax.data.folders import DataError, scan_dataset
from wan_jax.data.media import MediaError, probe, read_image, read_mask, read_video


def solid_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
  """Frame i is a flat grey of level 20 * i, so decoded frames can be told apart."""
  return np.stack([np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)])


def write_mp4(path: Path, frames: np.ndarray, fps: float = 24.0) -> Path:
  iio.imwrite(path, frames, plugin="pyav", fps=fps, codec="libx264")
  return path


def test_jpeg_exif_rotation_is_applied(tmp_path):
  img = Image.new("RGB", (64, 32), (255, 0, 0))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise on display
  img.save(tmp_path / "r.jpg", exif=exif)
  info = probe(tmp_path / "r.jpg")
  assert (info.width, info.height) == (32, 64)
  pixels, alpha = read_image(tmp_path / "r.jpg")
  assert pixels.shape == (1, 64, 32, 3) and alpha is None


@pytest.mark.parametrize("name,mode", [("a.png", "RGBA"), ("b.webp", "RGB"), ("c.bmp", "L"),
                                       ("d.png", "P"), ("e.png", "I;16")])
def test_any_mode_becomes_rgb(tmp_path, name, mode):
  Image.new(mode, (40, 24)).save(tmp_path / name)
  pixels, alpha = read_image(tmp_path / name)
  assert pixels.shape == (1, 24, 40, 3) and pixels.dtype == np.uint8
  assert (alpha is not None) == (mode == "RGBA")


def test_mp4_frames_come_back_in_order(tmp_path):
  path = write_mp4(tmp_path / "clip.mp4", solid_frames(9))
  info = probe(path)
  assert (info.frames, info.width, info.height, info.fps) == (9, 64, 48, 24.0)
  frames = read_video(path, [8, 0, 4])
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [160, 0, 80], atol=3)


def test_gif_and_broken_videos(tmp_path):
  iio.imwrite(tmp_path / "a.gif", solid_frames(5), extension=".gif", duration=60, loop=0)
  assert probe(tmp_path / "a.gif").frames == 5
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "junk.mov").write_bytes(b"\x00" * 4000)
  for name in ("empty.mp4", "junk.mov"):
    with pytest.raises(MediaError, match=name):
      probe(tmp_path / name)


def test_truncated_image_fails_with_its_name(tmp_path):
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
      tmp_path / "t.jpg", quality=95)
  data = (tmp_path / "t.jpg").read_bytes()
  (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
  with pytest.raises(MediaError, match="t.jpg"):
    probe(tmp_path / "t.jpg")


def test_mask_folder_and_mask_video(tmp_path):
  (tmp_path / "clip").mkdir()
  for i in range(5):
    Image.fromarray(np.full((8, 8), 255 if i % 2 else 0, np.uint8)).save(
        tmp_path / "clip" / f"{i:03d}.png")
  np.testing.assert_allclose(read_mask(tmp_path / "clip", [1, 2])[:, 0, 0], [1.0, 0.0])
  write_mp4(tmp_path / "m.mp4", solid_frames(5, 16, 16))
  np.testing.assert_allclose(read_mask(tmp_path / "m.mp4", [4])[0].mean(), 80 / 255, atol=0.02)


# --- a messy dataset folder ------------------------------------------------------------------

def half_white(h: int, w: int) -> Image.Image:
  a = np.zeros((h, w), np.uint8)
  a[:, : w // 2] = 255
  return Image.fromarray(a)


@pytest.fixture()
def messy(tmp_path):
  media, masks = tmp_path / "media", tmp_path / "masks"
  media.mkdir(), masks.mkdir()
  rgb = lambda h, w: Image.fromarray(np.random.default_rng(h * w).integers(0, 255, (h, w, 3),
                                                                            np.uint8))
  rgb(96, 128).save(media / "good.png")
  (media / "good.txt").write_text("a  red\n fox ")
  half_white(96, 128).save(masks / "good.png")
  rgb(64, 64).save(media / "nocaption.jpg")
  half_white(32, 32).save(masks / "nocaption.png")  # other size, same aspect: resized
  rgb(64, 64).save(media / "emptycap.webp")
  (media / "emptycap.txt").write_text("  \n")
  half_white(64, 64).save(masks / "emptycap.png")
  rgb(64, 64).save(media / "latin1.png")
  (media / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  half_white(64, 64).save(masks / "latin1.png")
  rgb(64, 64).save(media / "black.png")
  Image.new("L", (64, 64)).save(masks / "black.png")
  rgb(64, 64).save(media / "aspect.png")
  half_white(64, 128).save(masks / "aspect.png")
  (media / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
  half_white(64, 64).save(masks / "corrupt.png")
  write_mp4(media / "clip.mp4", solid_frames(12))
  half_white(48, 64).save(masks / "clip.png")
  write_mp4(media / "short.mp4", solid_frames(3))
  half_white(48, 64).save(masks / "short.png")
  rgb(64, 64).save(media / "nomask.png")
  (media / "notes.md").write_text("not media")
  return media, masks


def test_scan_reports_every_problem_by_name(messy, caplog):
  media, masks = messy
  cfg = dataset_config(folder_path=str(media), mask_path=str(masks), num_frames=9,
                       default_caption="a photo", missing_mask="skip")
  with caplog.at_level(logging.WARNING):
    report = scan_dataset(cfg)
  by_name = {i.media.name: i for i in report.items}
  assert sorted(by_name) == ["clip.mp4", "emptycap.webp", "good.png", "nocaption.jpg"]
  assert by_name["good.png"].caption == "a red fox"
  assert by_name["nocaption.jpg"].caption == "a photo"
  assert by_name["emptycap.webp"].caption == "a photo"
  assert by_name["clip.mp4"].num_frames == 9 and by_name["good.png"].num_frames == 1
  skipped = {Path(f).name: reason for f, reason in report.skipped}
  assert set(skipped) == {"latin1.png", "black.png", "aspect.png", "corrupt.png", "short.mp4",
                          "nomask.png"}
  assert "UTF-8" in skipped["latin1.png"] and "all black" in skipped["black.png"]
  assert "aspect" in skipped["aspect.png"] and "too short" in skipped["short.mp4"]
  for name in skipped:
    assert name in caplog.text
  summary = report.summary()
  assert "4 items, 6 skipped" in summary and "files ignored" in summary


def test_missing_masks_are_one_error_naming_the_files(messy):
  media, masks = messy
  with pytest.raises(DataError, match=r"nomask\.png.*missing_mask"):
    scan_dataset(dataset_config(folder_path=str(media), mask_path=str(masks), num_frames=9))
  report = scan_dataset(dataset_config(folder_path=str(media), mask_path=str(masks),
                                       num_frames=9, missing_mask="unmasked"))
  assert "nomask.png" in {i.media.name for i in report.items}


@pytest.mark.parametrize("setup", ["missing", "empty", "only_junk"])
def test_unusable_folders(tmp_path, setup):
  folder = tmp_path / "data"
  if setup != "missing":
    folder.mkdir()
  if setup == "only_junk":
    (folder / "broken.png").write_bytes(b"nope")
  with pytest.raises(DataError):
    scan_dataset(dataset_config(folder_path=str(folder)))


def test_examples_keep_mask_and_pixels_aligned(messy):
  media, masks = messy
  cfg = dataset_config(folder_path=str(media), mask_path=str(masks), num_frames=9,
                       missing_mask="skip", flip_prob=1.0, mask_min_value=0.0)
  items = {i.media.name: i for i in scan_dataset(cfg).items}
  ex = load_example(items["good.png"], 64, cfg, np.random.default_rng(0))
  assert ex.pixels.shape == (1, 48, 64, 3) and ex.weights.shape == (1, 6, 8)
  # The mask's white half was on the left; the flip moved it, and its weights, to the right.
  np.testing.assert_allclose(ex.weights[0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
  clip = load_example(items["clip.mp4"], 64, cfg, np.random.default_rng(0))
  assert clip.pixels.shape == (9, 48, 64, 3) and clip.weights.shape == (3, 6, 8)
  small = load_example(items["nocaption.jpg"], 64, cfg, np.random.default_rng(0))
  np.testing.assert_allclose(small.weights[0, 0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_unmasked_items_get_unit_weights_and_black_alpha_is_skipped(tmp_path):
  rgba = np.zeros((32, 48, 4), np.uint8)
  Image.fromarray(rgba).save(tmp_path / "clear.png")  # alpha all zero: nothing to train
  Image.new("RGB", (48, 32)).save(tmp_path / "plain.png")
  cfg = dataset_config(folder_path=str(tmp_path), alpha_mask=True)
  items = {i.media.name: i for i in scan_dataset(cfg).items}
  plain = load_example(items["plain.png"], 32, cfg, np.random.default_rng(0))
  assert plain.weights.min() == 1.0
  with pytest.raises(SkipItem):
    load_example(items["clear.png"], 32, cfg, np.random.default_rng(0))

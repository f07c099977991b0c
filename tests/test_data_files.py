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
  return np.stack([np.full((h, w, 3), (20 * i) % 256, np.uint8) for i in range(n)])


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_alpha_masks(tmp_path):
  Image.fromarray(np.zeros((32, 48, 4), np.uint8)).save(tmp_path / "clear.png")  # transparent
  half = np.zeros((32, 48, 4), np.uint8)
  half[:, :24, 3] = 255
  Image.fromarray(half).save(tmp_path / "half.png")
  Image.new("RGB", (48, 32)).save(tmp_path / "plain.png")
  cfg = dataset_config(folder_path=str(tmp_path), alpha_mask=True)
  report = scan_dataset(cfg)
  assert [Path(f).name for f, _ in report.skipped] == ["clear.png"]
  items = {i.media.name: i for i in report.items}
  assert load_example(items["plain.png"], 32, cfg, np.random.default_rng(0)).weights.min() == 1.0
  w = load_example(items["half.png"], 64, cfg, np.random.default_rng(0)).weights
  np.testing.assert_allclose(w[0, 0], [1, 1, 1, 0, 0, 0])


def test_a_file_that_breaks_after_the_scan_is_skipped_not_fatal(tmp_path):
  Image.new("RGB", (48, 32), (200, 10, 10)).save(tmp_path / "a.png")
  cfg = dataset_config(folder_path=str(tmp_path))
  item = scan_dataset(cfg).items[0]
  (tmp_path / "a.png").write_bytes(b"gone")
  with pytest.raises(SkipItem, match="a.png"):
    load_example(item, 32, cfg, np.random.default_rng(0))


# --- what the first review found --------------------------------------------------------------

def write_faststart_mp4(path: Path, frames: np.ndarray) -> None:
  """An MP4 with its index at the front, as web uploads have: truncated, it still opens."""
  import av
  with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
    stream = out.add_stream("libx264", rate=16)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


@pytest.mark.slow
def test_truncated_faststart_clip_is_caught_by_the_scan(tmp_path):
  rng = np.random.default_rng(0)
  write_faststart_mp4(tmp_path / "cut.mp4", rng.integers(0, 255, (40, 64, 64, 3), np.uint8))
  data = (tmp_path / "cut.mp4").read_bytes()
  (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
  write_mp4(tmp_path / "ok.mp4", solid_frames(40, 64, 64))
  report = scan_dataset(dataset_config(folder_path=str(tmp_path), num_frames=33))
  assert [i.media.name for i in report.items] == ["ok.mp4"]
  assert "cut.mp4" in report.skipped[0][0]  # too short or undecodable, named either way


@pytest.mark.slow
def test_mask_videos_and_folders_are_checked_at_scan(tmp_path):
  media, masks = tmp_path / "media", tmp_path / "masks"
  media.mkdir(), masks.mkdir()
  for name in ("wide", "count", "ok"):
    write_mp4(media / f"{name}.mp4", solid_frames(9, 48, 64))
  write_mp4(masks / "wide.mp4", solid_frames(9, 64, 64) + 100)  # another aspect
  (masks / "count").mkdir()  # 5 per-frame masks for a 9-frame clip
  for i in range(5):
    Image.new("L", (64, 48), 255).save(masks / "count" / f"{i}.png")
  (masks / "ok").mkdir()
  for i in range(9):
    Image.new("L", (64, 48), 255 if i in (0, 10) else 0).save(masks / "ok" / f"{i}.png")
  report = scan_dataset(dataset_config(folder_path=str(media), mask_path=str(masks),
                                       num_frames=9))
  assert [i.media.name for i in report.items] == ["ok.mp4"]
  reasons = dict((Path(f).name, r) for f, r in report.skipped)
  assert "aspect" in reasons["wide.mp4"] and "5 frames" in reasons["count.mp4"]


def test_per_frame_masks_sort_naturally(tmp_path):
  for i in range(12):  # 0.png .. 11.png, no zero padding: frame 2 is 2.png, not 10.png
    Image.new("L", (8, 8), 255 if i == 2 else 0).save(tmp_path / f"{i}.png")
  np.testing.assert_allclose(read_mask(tmp_path, [2, 10])[:, 0, 0], [1.0, 0.0])


def test_16_bit_masks_are_scaled_not_clipped(tmp_path):
  Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "m.png")
  np.testing.assert_allclose(read_mask(tmp_path / "m.png", None), 0.5, atol=0.01)


def test_masks_match_by_exact_stem_even_with_glob_characters(tmp_path):
  media, masks = tmp_path / "media", tmp_path / "masks"
  media.mkdir(), masks.mkdir()
  for name in ("a", "shot[1]"):
    Image.new("RGB", (32, 32)).save(media / f"{name}.png")
  half_white(32, 32).save(masks / "a.b.png")  # not a's mask
  half_white(32, 32).save(masks / "shot[1].png")
  with pytest.raises(DataError, match=r"1 items have no mask.*a\.png"):
    scan_dataset(dataset_config(folder_path=str(media), mask_path=str(masks)))
  report = scan_dataset(dataset_config(folder_path=str(media), mask_path=str(masks),
                                       missing_mask="skip"))
  assert [(i.media.name, i.mask.name) for i in report.items] == [("shot[1].png", "shot[1].png")]


def test_tiny_images_are_skipped_by_name(tmp_path):
  Image.new("RGB", (40, 12)).save(tmp_path / "tiny.png")
  Image.new("RGB", (40, 40)).save(tmp_path / "fine.png")
  report = scan_dataset(dataset_config(folder_path=str(tmp_path)))
  assert [i.media.name for i in report.items] == ["fine.png"]
  assert "tiny.png" in report.skipped[0][0] and "too small" in report.skipped[0][1]


def test_an_image_with_a_mask_folder_uses_its_first_frame(tmp_path):
  media, masks = tmp_path / "media", tmp_path / "masks"
  media.mkdir(), (masks / "pic").mkdir(parents=True)
  Image.new("RGB", (32, 32)).save(media / "pic.png")
  for i in range(3):
    half_white(32, 32).save(masks / "pic" / f"{i}.png")
  cfg = dataset_config(folder_path=str(media), mask_path=str(masks), resolution=32)
  ex = load_example(scan_dataset(cfg).items[0], 32, cfg, np.random.default_rng(0))
  np.testing.assert_allclose(ex.weights[0, 0], [1, 1, 0, 0])


def test_a_relaunch_decodes_only_what_changed(tmp_path, monkeypatch):
  from wan_jax.data import folders
  media, cache = tmp_path / "media", tmp_path / "cache"
  media.mkdir()
  write_mp4(media / "clip.mp4", solid_frames(9))
  Image.new("RGB", (32, 32)).save(media / "a.png")
  (media / "broken.png").write_bytes(b"nope")
  decoded = []
  real = folders.probe
  monkeypatch.setattr(folders, "probe", lambda p: decoded.append(p.name) or real(p))
  cfg = dataset_config(folder_path=str(media), num_frames=9)

  first = folders.scan_dataset(cfg, cache_dir=cache)
  assert sorted(decoded) == ["a.png", "broken.png", "clip.mp4"]
  decoded.clear()
  second = folders.scan_dataset(cfg, cache_dir=cache)
  assert decoded == []  # all remembered, the broken file too
  assert second.skipped == first.skipped and [i.info for i in second.items] == [
      i.info for i in first.items]
  Image.new("RGB", (48, 32)).save(media / "a.png")  # changed: decoded again
  third = folders.scan_dataset(cfg, cache_dir=cache)
  assert decoded == ["a.png"]
  assert {i.media.name: i.info.width for i in third.items}["a.png"] == 48


def test_caption_ext_with_or_without_a_dot(tmp_path):
  Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
  (tmp_path / "a.caption").write_text("hello")
  for ext in ("caption", ".caption"):
    report = scan_dataset(dataset_config(folder_path=str(tmp_path), caption_ext=ext))
    assert report.items[0].caption == "hello"
    assert "files ignored" not in report.summary()


def test_an_interrupted_demo_generation_is_redone_not_trained_on_half_made(tmp_path, monkeypatch):
  from wan_jax import video
  from wan_jax.data import demo

  def killed(*args, **kwargs):
    raise KeyboardInterrupt  # the clip is written after the images: items exist, one is missing
  with monkeypatch.context() as m:
    m.setattr(video, "write", killed)
    with pytest.raises(KeyboardInterrupt):
      demo.make_demo_dataset(tmp_path / "demo_data")
  assert list(tmp_path.iterdir()) == []  # no half-made folder under the real name
  media, masks = demo.make_demo_dataset(tmp_path / "demo_data")
  assert len(list(media.glob("*.png"))) == 4 and (media / "rolling.mp4").is_file()
  assert len(list((masks / "rolling").iterdir())) == 9


def test_items_that_would_train_on_the_blank_prompt_are_a_warning_naming_the_data_set(tmp_path,
                                                                                       caplog):
  """No caption file and an empty default_caption: once only a count in the summary."""
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / f"{name}.png")
  (tmp_path / "a.txt").write_text("a captioned image")
  with caplog.at_level(logging.WARNING):
    report = scan_dataset(dataset_config(folder_path=str(tmp_path), resolution=[32]), 0,
                          cache_dir=None)
  assert len(report.items) == 3
  warned = [r.getMessage() for r in caplog.records if "blank prompt" in r.getMessage()]
  assert warned == [f"datasets[0] ({tmp_path}): 2 of its items have no caption (no .txt file "
                    f"beside them and datasets[0].default_caption is empty): they train on the "
                    f"blank prompt; add caption files or set datasets[0].default_caption"]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    scan_dataset(dataset_config(folder_path=str(tmp_path), resolution=[32], default_caption="x"),
                 0, cache_dir=None)
  assert not [r for r in caplog.records if "blank prompt" in r.getMessage()]

"""Latent and prompt-embedding caches: contents, hits, targeted rebuilds, and bad cache files."""

from __future__ import annotations

import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from wan_jax import encode_prompts, load_tokenizer
from wan_jax.data.caches import BLANK, CacheSettings
from wan_jax.data.config import dataset_config
from wan_jax.data.demo import make_demo_tokenizer
from wan_jax.data.examples import plan_geometry, read_pixels
from wan_jax.data.folders import DataError
from wan_jax.data.pipeline import build_pipeline
from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import tiny_vae

TEXT_LEN = 24


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
  tok = load_tokenizer(make_demo_tokenizer(tmp_path_factory.mktemp("tok")))
  return WanVAE(tiny_vae(), rngs=nnx.Rngs(2)), tok, UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(3))


class Loads:
  """Encoder loaders that count their calls (the trainer must not load what it does not need)."""

  def __init__(self, encoders):
    self.encoders, self.vae, self.text = encoders, 0, 0

  def load_vae(self):
    self.vae += 1
    return self.encoders[0]

  def load_text(self):
    self.text += 1
    return self.encoders[1], self.encoders[2]


def make_folder(root: Path) -> tuple[Path, Path]:
  media, masks = root / "media", root / "masks"
  media.mkdir()
  masks.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(media / "wide.png")
  (media / "wide.txt").write_text("a red ball")
  Image.fromarray(rng.integers(0, 255, (64, 48, 3), np.uint8)).save(media / "tall.png")
  (media / "tall.txt").write_text("a blue ball")
  frames = rng.integers(0, 255, (7, 48, 64, 3), np.uint8)
  iio.imwrite(media / "clip.mp4", frames, plugin="pyav", fps=16, codec="libx264")
  (media / "clip.txt").write_text("the ball rolling")
  half = np.zeros((48, 80), np.uint8)
  half[:, :40] = 255
  Image.fromarray(half).save(masks / "wide.png")
  return media, masks


def settings(root: Path, **kw) -> CacheSettings:
  return CacheSettings(root=root, vae_id="tiny-vae-2", text_id="tiny-umt5-3", text_len=TEXT_LEN,
                       **kw)


def dataset(media: Path, masks: Path, **kw):
  base = dict(folder_path=str(media), mask_path=str(masks), missing_mask="unmasked",
              num_frames=5, resolution=32, caption_dropout_rate=0.0, mask_min_value=0.0)
  return dataset_config(**(base | kw))


def pipeline(ds, cache: CacheSettings, loads: Loads | None, **kw):
  return build_pipeline([ds], global_batch=1, seed=0, caches=cache, progress=False,
                        load_vae=loads and loads.load_vae, load_text=loads and loads.load_text,
                        **kw)


def batches(p, n: int) -> list[dict]:
  it = iter(p.dataset)
  return [next(it) for _ in range(n)]


@pytest.mark.slow
def test_cached_batches_hold_the_vae_moments_and_padded_prompt_embeddings(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  loads = Loads(encoders)
  ds = dataset(media, masks)
  p = pipeline(ds, settings(tmp_path / "cache"), loads)
  assert (loads.vae, loads.text) == (1, 1)
  assert p.cache_report.latents_built == 3 and p.cache_report.weights_built == 1
  assert p.cache_report.prompts_built == 4  # three captions and the blank one
  vae, tok, enc = encoders
  seen = set()
  for b in batches(p, 6):
    assert set(b) >= {"latent_mean", "latent_logvar", "weights", "context", "caption"}
    assert "pixels" not in b
    entry = next(e for e in p.entries if e.item.caption == b["caption"][0])
    seen.add(entry.item.media.name)
    geo = plan_geometry(entry.item, entry.resolution, ds, np.random.default_rng(0))
    video = read_pixels(entry.item, geo)[None].astype(np.float32) / 127.5 - 1.0
    mean, logvar = vae.moments(video)
    # The cache ran the VAE compiled, this eagerly: equal up to float rounding.
    np.testing.assert_allclose(b["latent_mean"][0], np.asarray(mean[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b["latent_logvar"][0], np.asarray(logvar[0]), rtol=1e-5, atol=1e-5)
    assert b["weights"].shape == b["latent_mean"].shape[:4]
    full = np.asarray(encode_prompts([entry.item.caption], tok, enc, max_length=TEXT_LEN))
    assert not b["context"][0, 8:].any()  # rows past the caption's tokens stay zero
    np.testing.assert_allclose(b["context"], full, rtol=1e-5, atol=1e-6)
    if entry.item.media.name == "wide.png":  # left half white: weights 1 left, 0 right
      w = b["weights"][0, 0]
      assert w[:, :w.shape[1] // 2].min() == 1.0 and w[:, w.shape[1] // 2:].max() == 0.0
    else:
      assert b["weights"].min() == 1.0
  assert seen == {"wide.png", "tall.png", "clip.mp4"}
  assert not list((tmp_path / "cache").rglob(".tmp-*"))  # written atomically


@pytest.mark.slow
def test_complete_caches_never_load_the_encoders(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  pipeline(dataset(media, masks), settings(tmp_path / "cache"), Loads(encoders))
  again = Loads(encoders)
  p = pipeline(dataset(media, masks), settings(tmp_path / "cache"), again)
  assert (again.vae, again.text) == (0, 0)
  assert p.cache_report.reused == 3 + 1 + 4 and p.cache_report.latents_built == 0
  batches(p, 3)
  # Without encoders at all, a complete cache is enough to train.
  p = pipeline(dataset(media, masks), settings(tmp_path / "cache"), None)
  assert len(batches(p, 3)) == 3


@pytest.mark.slow
def test_a_changed_setting_rebuilds_only_what_it_touches(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  cache = settings(tmp_path / "cache")
  pipeline(dataset(media, masks), cache, Loads(encoders))

  loads = Loads(encoders)  # mask_min_value: weight maps only, no video decoded or encoded
  p = pipeline(dataset(media, masks, mask_min_value=0.25), cache, loads)
  assert (loads.vae, loads.text) == (0, 0)
  assert (p.cache_report.latents_built, p.cache_report.weights_built) == (0, 1)
  assert min(b["weights"].min() for b in batches(p, 6)) == 0.25

  loads = Loads(encoders)  # a new caption: one prompt, no VAE
  (media / "tall.txt").write_text("a green ball")
  p = pipeline(dataset(media, masks), cache, loads)
  assert (loads.vae, loads.text, p.cache_report.prompts_built) == (0, 1, 1)

  loads = Loads(encoders)  # one media file replaced: its latents only
  Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(media / "tall.png")
  p = pipeline(dataset(media, masks), cache, loads)
  assert (loads.vae, loads.text, p.cache_report.latents_built) == (1, 0, 1)

  loads = Loads(encoders)  # another VAE: every latent, no prompt
  other = CacheSettings(root=tmp_path / "cache", vae_id="another-vae", text_id="tiny-umt5-3",
                        text_len=TEXT_LEN)
  p = pipeline(dataset(media, masks), other, loads)
  assert (p.cache_report.latents_built, p.cache_report.prompts_built) == (3, 0)


@pytest.mark.slow
def test_caption_dropout_uses_the_cached_blank_caption(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  p = pipeline(dataset(media, masks, caption_dropout_rate=1.0), settings(tmp_path / "c"),
               Loads(encoders))
  _, tok, enc = encoders
  blank = np.asarray(encode_prompts([BLANK], tok, enc, max_length=TEXT_LEN))
  for b in batches(p, 3):
    assert b["caption"][0] == BLANK
    np.testing.assert_allclose(b["context"], blank, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_flips_are_cached_as_two_variants(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  p = pipeline(dataset(media, masks, flip_prob=0.5), settings(tmp_path / "c"), Loads(encoders))
  assert p.cache_report.latents_built == 6 and p.cache_report.weights_built == 2
  wide = [b for b in batches(p, 24) if b["caption"][0] == "a red ball"]
  kinds = {(float(b["weights"][0, 0, :, 0].mean()), float(b["weights"][0, 0, :, -1].mean()))
           for b in wide}
  assert kinds == {(1.0, 0.0), (0.0, 1.0)}  # the mask flips with the latents


def test_random_geometry_cannot_be_cached(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  with pytest.raises(DataError, match="random_crop"):
    pipeline(dataset(media, masks, random_crop=True), settings(tmp_path / "c"), Loads(encoders))
  with pytest.raises(DataError, match="frame_selection"):
    pipeline(dataset(media, masks, frame_selection="window"), settings(tmp_path / "c"),
             Loads(encoders))


def test_incomplete_caches_without_encoders_are_a_clear_error(tmp_path):
  media, masks = make_folder(tmp_path)
  with pytest.raises(ValueError, match="incomplete.*3 latents"):
    pipeline(dataset(media, masks), settings(tmp_path / "c"), None)


@pytest.mark.slow
def test_a_corrupt_cache_file_is_named_and_its_row_replaced(tmp_path, encoders, caplog):
  media, masks = make_folder(tmp_path)
  Image.fromarray(np.full((64, 48, 3), 9, np.uint8)).save(media / "tall_too.png")  # same bucket
  p = pipeline(dataset(media, masks), settings(tmp_path / "c"), Loads(encoders))
  victim = next(i for i, e in enumerate(p.entries) if e.item.media.name == "tall.png")
  bad = p.cache_plan.store.path("latents", p.cache_plan.variants[victim][False].latent_key)
  bad.write_bytes(b"not a safetensors file")
  with caplog.at_level(logging.WARNING):
    got = batches(p, 6)
  assert str(bad) in caplog.text and "tall.png" in caplog.text
  assert all(b["valid"].all() for b in got)  # tall_too.png stood in for it
  assert any(b["substituted"].any() for b in got)
  assert not bad.exists()  # removed, so the next cache pass rebuilds it


@pytest.mark.slow
def test_damaged_cache_files_are_removed_named_and_rebuilt(tmp_path, encoders, caplog):
  media, masks = make_folder(tmp_path)
  Image.fromarray(np.full((64, 48, 3), 9, np.uint8)).save(media / "tall_too.png")  # same bucket
  first = pipeline(dataset(media, masks), settings(tmp_path / "c"), Loads(encoders))
  plan = first.cache_plan
  victim = next(i for i, e in enumerate(first.entries) if e.item.media.name == "tall.png")
  nan_file = plan.store.path("latents", plan.variants[victim][False].latent_key)
  shape = plan.store.read("latents", plan.variants[victim][False].latent_key)["mean"].shape
  plan.store.write("latents", plan.variants[victim][False].latent_key,
                   {"mean": np.full(shape, np.nan, np.float32), "logvar": np.zeros(shape, np.float32)})
  blank = plan.store.path("prompts", plan.prompt_keys[BLANK])
  blank.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header cut short

  loads = Loads(encoders)
  with caplog.at_level(logging.WARNING):
    p = pipeline(dataset(media, masks), settings(tmp_path / "c"), loads)
  assert f"cache file unreadable: {blank}" in caplog.text  # the blank caption: rebuilt now
  assert (loads.vae, loads.text) == (0, 1) and p.cache_report.prompts_built == 1
  assert "(1 of them replacing damaged files)" in p.cache_report.summary()
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    got = batches(p, 8)
  assert f"cache file holds NaN or infinite values in 'mean': {nan_file}" in caplog.text
  assert all(np.isfinite(b["latent_mean"]).all() for b in got)  # never trained on
  assert not nan_file.exists()
  again = pipeline(dataset(media, masks), settings(tmp_path / "c"), Loads(encoders))
  assert again.cache_report.latents_built == 1 and nan_file.is_file()


@pytest.mark.slow
def test_an_item_that_cannot_be_encoded_is_skipped_and_counted(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  ds = dataset(media, masks)
  p = pipeline(ds, settings(tmp_path / "c"), Loads(encoders))
  (media / "clip.mp4").write_bytes(b"truncated")  # changed after the scan's probe cache
  from wan_jax.data import caches
  plan = caches.plan_caches([(e.item, e.resolution) for e in p.entries], [ds],
                            settings(tmp_path / "c2"))
  report = caches.build_caches(plan, [(e.item, e.resolution) for e in p.entries], [ds],
                               Loads(encoders).load_vae, Loads(encoders).load_text,
                               progress=False)
  assert [Path(f).name for f, _ in report.failed] == ["clip.mp4"]
  assert len(plan.failed) == 1 and report.latents_built == 2


@pytest.mark.slow
def test_repeated_items_are_encoded_once(tmp_path, encoders):
  media, masks = make_folder(tmp_path)
  p = pipeline(dataset(media, masks, repeats=3), settings(tmp_path / "c"), Loads(encoders))
  assert len(p.entries) == 9
  assert (p.cache_report.latents_built, p.cache_report.weights_built) == (3, 1)

"""Still images train image-to-video as ai-toolkit trains them (wan_jax/tasks/i2v_images.py): with
an empty condition by default, on cached degraded copies of themselves, or as static clips on a
blurred copy; masks cover every frame of the static clip; the draws are the same after a resume.
The pixel recipes match torch's bilinear resize and torchvision's Gaussian blur."""

from __future__ import annotations

import collections
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from PIL import Image

import wan_jax
from wan_jax.data.caches import CacheSettings, read_variant
from wan_jax.data.config import dataset_config
from wan_jax.data.demo import make_demo_tokenizer
from wan_jax.data.examples import read_pixels, read_weights
from wan_jax.data.pipeline import FORM_DEGRADED, FORM_IMAGE, FORM_STATIC_CLIP, build_pipeline
from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import tiny_vae
from wan_jax.tasks import IMAGE_TO_VIDEO
from wan_jax.tasks.i2v_images import (ImageTraining, clip_condition_frame, degrade, gaussian_blur,
                                      resize_bilinear, seed_of_key)


def _torch_blur(image: np.ndarray, kernel_hw: tuple[int, int], sigma_xy: tuple[float, float]):
  """torchvision's functional gaussian_blur, written with torch ops (reflect padding)."""
  def taps(size, sigma):
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()
  kh, kw = kernel_hw
  kernel = taps(kh, sigma_xy[1])[:, None] * taps(kw, sigma_xy[0])[None, :]
  x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
  x = F.pad(x, [kw // 2, kw // 2, kh // 2, kh // 2], mode="reflect")
  weight = kernel[None, None].repeat(3, 1, 1, 1)
  return F.conv2d(x, weight, groups=3)[0].permute(1, 2, 0).numpy()


def test_the_pixel_recipes_match_torch():
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (37, 52, 3)).astype(np.float32)  # odd, non-square
  for kernel, sigma in (((3, 3), (0.1, 1.0)), ((37, 51), (24.0, 24.0)), ((5, 9), (2.0, 0.7))):
    np.testing.assert_allclose(gaussian_blur(image, kernel, sigma),
                               _torch_blur(image, kernel, sigma), rtol=1e-5, atol=2e-6)
  for size in ((2, 3), (9, 13), (74, 104)):  # down (sampling, no averaging) and up
    want = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size,
                         mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_bilinear(image, *size), want, rtol=1e-5, atol=2e-6)
  # The static clip's condition frame keeps only the coarse picture; degrading is mild.
  start = clip_condition_frame(image, 24.0, 0.0625)
  assert start.shape == image.shape and np.abs(start).max() <= 1.0
  detail = lambda x: np.abs(np.diff(x, axis=1)).mean()  # neighbouring pixels' difference
  assert detail(start) < 0.05 * detail(image)
  smooth = np.broadcast_to(np.linspace(-0.8, 0.8, 52, dtype=np.float32)[None, :, None],
                           image.shape)
  a, b = degrade(smooth, np.random.default_rng(1)), degrade(smooth, np.random.default_rng(1))
  np.testing.assert_array_equal(a, b)  # reproducible from its generator
  assert 0.02 < np.sqrt(np.mean((a - smooth) ** 2)) < 0.15 and np.abs(a).max() <= 1.0


def test_bad_settings_are_one_line():
  with pytest.raises(ValueError, match=r"image_i2v.clip_num_frames must be 4k\+1 >= 5 \(a clip\), got 4"):
    ImageTraining(clip_num_frames=4)
  with pytest.raises(ValueError, match=r"image_i2v.conditioning_prob must be in \[0, 1\]"):
    ImageTraining(conditioning_prob=1.5)


@pytest.fixture(scope="module")
def vae():
  return WanVAE(tiny_vae(), rngs=nnx.Rngs(2))


def _folder(root: Path) -> tuple[Path, Path]:
  """Three 48x80 images (H != W), one with a mask over its left half."""
  media, masks = root / "media", root / "masks"
  media.mkdir(parents=True)
  masks.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(media / f"{name}.png")
    (media / f"{name}.txt").write_text(f"still {name}")
  mask = np.zeros((48, 80), np.uint8)
  mask[:, :40] = 255
  Image.fromarray(mask).save(masks / "a.png")
  return media, masks


def _pipeline(root: Path, vae, images: ImageTraining, batch: int = 1):
  media, masks = (root / "data/media", root / "data/masks")
  if not media.exists():
    _folder(root / "data")
  ds = dataset_config(folder_path=str(media), mask_path=str(masks), missing_mask="unmasked",
                      resolution=32, caption_dropout_rate=0.0)
  tok = make_demo_tokenizer(root / "tok")
  p = build_pipeline([ds], global_batch=batch, seed=0, progress=False, task=IMAGE_TO_VIDEO,
                     images=images,
                     caches=CacheSettings(root / "cache", "tiny-vae-2", "tiny-umt5-3", 24),
                     load_vae=lambda: vae,
                     load_text=lambda: (wan_jax.load_tokenizer(tok),
                                        UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(3))))
  return p, ds


def _batches(p, n: int, state=None) -> list[dict]:
  it = iter(p.dataset)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)]


def test_images_train_with_an_empty_condition_by_default(tmp_path, vae):
  p, _ = _pipeline(tmp_path, vae, ImageTraining())
  assert not p.report.skipped and len(p.entries) == 3
  assert "3 of 3 items are one frame: images train image-to-video with an empty condition" in (
      p.summary())
  assert p.cache_report.pixel_built == {} and p.cache_report.latents_built == 3
  assert not (tmp_path / "cache/condition").exists()  # nothing to encode: the condition is empty
  _, h, w = p.entries[0].bucket
  for batch in _batches(p, 3):
    assert batch["condition"].shape == (1, 1, h // 8, w // 8, 20)
    assert not batch["condition"].any() and list(batch["form"]) == [FORM_IMAGE]
  assert p.buckets() == [(1, h, w)]


@pytest.mark.slow
def test_degraded_copies_are_cached_and_drawn_per_row_the_same_after_a_resume(tmp_path, vae):
  images = ImageTraining(conditioning=True, conditioning_prob=0.5, conditioning_variants=2)
  p, ds = _pipeline(tmp_path, vae, images, batch=3)
  assert p.cache_report.pixel_built == {"condition": 6}  # 3 images x 2 copies
  # A cached copy is the condition of its image degraded by the generator its key seeds.
  e = p.entries[0]
  v = p.cache_plan.variants[0][False]
  frame = read_pixels(e.item, v.geometry)[0].astype(np.float32) / 127.5 - 1.0
  for n, keys in enumerate(v.degraded_keys):
    start = degrade(frame, np.random.default_rng(seed_of_key(keys["condition"])))
    want = wan_jax.i2v_condition(vae, jnp.asarray(start[None]), 1)[0]
    got = read_variant(p.cache_plan, 0, False, degraded=n)["condition"]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    assert (got[..., :4] == 1).all()  # the frame is given
  first, second = (read_variant(p.cache_plan, 0, False, degraded=n)["condition"] for n in (0, 1))
  assert not np.array_equal(first, second)  # two different draws

  batches = _batches(p, 8)
  forms = collections.Counter(f for b in batches for f in b["form"])
  assert set(forms) == {FORM_IMAGE, FORM_DEGRADED}, forms  # both, drawn per row
  for b in batches:
    for row, form in enumerate(b["form"]):
      assert b["condition"][row].any() == (form == FORM_DEGRADED)
  # A resumed iterator draws the same rows, copies and forms.
  it = iter(p.dataset)
  for _ in range(3):
    next(it)
  again = _batches(p, 5, it.get_state())
  for a, b in zip(batches[3:], again):
    assert list(a["form"]) == list(b["form"])
    np.testing.assert_array_equal(a["condition"], b["condition"])


@pytest.mark.slow
def test_static_clips_on_a_blurred_copy_with_the_mask_on_every_frame(tmp_path, vae):
  images = ImageTraining(clip_training=True, clip_training_prob=0.5, conditioning=True)
  p, ds = _pipeline(tmp_path, vae, images)
  _, h, w = p.entries[0].bucket
  assert p.buckets() == [(1, h, w), (5, h, w)]  # the planner sizes the step for the clip
  assert "or a static 5-frame clip on a blurred copy (50% of batches)" in p.summary()
  # With clip training on, images not drawn as clips keep the empty condition (as ai-toolkit).
  assert p.cache_report.pixel_built == {"condition": 3} and p.cache_report.latents_built == 6
  masked = next(i for i, e in enumerate(p.entries) if e.item.media.name == "a.png")
  e, v = p.entries[masked], p.cache_plan.variants[masked][False]
  clip = read_variant(p.cache_plan, masked, False, clip=True)
  frame = read_pixels(e.item, v.geometry)[0].astype(np.float32) / 127.5 - 1.0
  video = jnp.asarray(np.repeat(frame[None, None], 5, axis=1))
  mean, _ = vae.moments(video)
  np.testing.assert_allclose(clip["latent_mean"], np.asarray(mean[0]), rtol=1e-5, atol=1e-5)
  start = clip_condition_frame(frame, 24.0, 0.0625)
  want = wan_jax.i2v_condition(vae, jnp.asarray(start[None]), 5)[0]
  np.testing.assert_allclose(clip["condition"], np.asarray(want), rtol=1e-5, atol=1e-5)
  assert (clip["condition"][:1, ..., :4] == 1).all() and not clip["condition"][1:, ..., :4].any()
  image_weights = read_weights(e.item, v.geometry, ds)
  assert clip["weights"].shape == (2, h // 8, w // 8)
  for f in range(2):  # the image's mask on every latent frame
    np.testing.assert_array_equal(clip["weights"][f], image_weights[0])
  assert 0 < image_weights.mean() < 1

  batches = _batches(p, 10)
  forms = collections.Counter(f for b in batches for f in b["form"])
  assert set(forms) == {FORM_IMAGE, FORM_STATIC_CLIP}, forms
  for b in batches:
    clip_batch = b["form"][0] == FORM_STATIC_CLIP
    assert b["latent_mean"].shape[1] == (2 if clip_batch else 1)
    assert b["condition"].any() == clip_batch
  it = iter(p.dataset)
  for _ in range(4):
    next(it)
  for a, b in zip(batches[4:], _batches(p, 6, it.get_state())):
    assert list(a["form"]) == list(b["form"])
    np.testing.assert_array_equal(a["latent_mean"], b["latent_mean"])


def test_images_are_planned_with_their_own_files_only_when_asked(tmp_path):
  """No caches built here: the plan alone says which files each image needs."""
  from wan_jax.data.caches import plan_caches
  from wan_jax.data.folders import ScanReport, scan_dataset

  _folder(tmp_path / "data")
  ds = dataset_config(folder_path=str(tmp_path / "data/media"), resolution=32,
                      mask_path=str(tmp_path / "data/masks"), missing_mask="unmasked")
  report = ScanReport()
  scan_dataset(ds, 0, report)
  pairs = [(item, 32) for item in report.items]
  settings = CacheSettings(tmp_path / "cache", "v", "t", 8)
  plain = plan_caches(pairs, [ds], settings, task=IMAGE_TO_VIDEO, images=ImageTraining())
  both = plan_caches(pairs, [ds], settings, task=IMAGE_TO_VIDEO,
                     images=ImageTraining(conditioning=True, conditioning_variants=3,
                                          clip_training=True, clip_num_frames=9))
  degraded = plan_caches(pairs, [ds], settings, task=IMAGE_TO_VIDEO,
                         images=ImageTraining(conditioning=True, conditioning_variants=3))
  for plan, files in ((plain, 1), (degraded, 4), (both, 3)):
    v = plan.variants[0][False]
    kinds = collections.Counter(kind for kind, _ in v.files())
    assert kinds["latents"] + kinds["condition"] == files, kinds
  assert both.variants[0][False].clip.geometry.bucket == (9, *plain.variants[0][False].geometry.bucket[1:])
  # The same image keeps its latents' key whichever way it also trains.
  assert len({p.variants[0][False].latent_key for p in (plain, both, degraded)}) == 1


def test_a_resume_with_other_image_settings_is_refused(tmp_path):
  """They change which files rows read and what is drawn: another run, not this one resumed."""
  from helpers import get_config
  from wan_jax.train.run.resume import check_resume, resume_settings

  i2v, t2v = get_config("tiny", file="wan22_i2v_masked.py"), get_config("tiny")
  saved = resume_settings(i2v)
  check_resume(saved, i2v, 1, tmp_path)
  # Runs saved before the section existed: image-to-video ones had its defaults, others none.
  check_resume({k: v for k, v in saved.items() if k != "image_i2v"}, i2v, 1, tmp_path)
  check_resume({k: v for k, v in resume_settings(t2v).items() if k != "image_i2v"}, t2v, 1,
               tmp_path)
  i2v.image_i2v.clip_training = True
  with pytest.raises(ValueError, match="other settings for image_i2v"):
    check_resume(saved, i2v, 1, tmp_path)

"""Image-to-video training: each clip's condition is cached beside its latents (same crop, flip and
frames), a one-frame item beside clips trains with an empty condition (tests/test_i2v_images.py has
the other ways), bad preview settings are one line, and the tiny
I2V demo runs end to end through launch.py (both experts, LoRA files, a preview from an image)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import wan_jax
from wan_jax.data.caches import CacheSettings, read_variant
from wan_jax.data.config import dataset_config
from wan_jax.data.demo import make_demo_tokenizer
from wan_jax.data.examples import plan_geometry, read_pixels
from wan_jax.data.pipeline import build_pipeline
from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
from wan_jax.model.vae import WanVAE, normalize_latents
from wan_jax.model.vae_config import tiny_vae
from wan_jax.tasks import IMAGE_TO_VIDEO
from wan_jax.weights import export
from wan_jax.model import lora
from wan_jax.train.run import loading
from wan_jax.train.run.trainer import train
from helpers import REPO, assert_quiet, get_config, launch



def i2v_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  return get_config(variant, file="wan22_i2v_masked.py")


def make_folder(root: Path) -> tuple[Path, Path]:
  """Two clips (one masked), and an image (no condition file: its condition is empty)."""
  media, masks = root / "media", root / "masks"
  media.mkdir(parents=True)
  masks.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    frames = rng.integers(0, 255, (9, 48, 80, 3), np.uint8)  # H != W
    iio.imwrite(media / f"{name}.mp4", frames, plugin="pyav", fps=16, codec="libx264")
    (media / f"{name}.txt").write_text(f"clip {name}")
  mask = np.zeros((9, 48, 80, 3), np.uint8)
  mask[:, :, :40] = 255
  iio.imwrite(masks / "a.mp4", mask, plugin="pyav", fps=16, codec="libx264")
  Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(media / "still.png")
  return media, masks


@pytest.fixture(scope="module")
def vae():
  return WanVAE(tiny_vae(), rngs=nnx.Rngs(2))


def i2v_pipeline(root: Path, vae, **dataset_kw):
  media, masks = make_folder(root / "data")
  ds = dataset_config(folder_path=str(media), mask_path=str(masks), missing_mask="unmasked",
                      num_frames=5, resolution=32, caption_dropout_rate=0.0, **dataset_kw)
  tok = make_demo_tokenizer(root / "tok")
  p = build_pipeline([ds], global_batch=1, seed=0, progress=False, task=IMAGE_TO_VIDEO,
                     caches=CacheSettings(root / "cache", "tiny-vae-2", "tiny-umt5-3", 24),
                     load_vae=lambda: vae,
                     load_text=lambda: (wan_jax.load_tokenizer(tok),
                                        UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(3))))
  return p, ds


@pytest.mark.slow
def test_the_condition_is_cached_with_the_latents_crop_flip_and_frames(tmp_path, vae):
  p, ds = i2v_pipeline(tmp_path, vae, flip_prob=1.0)  # always flipped: one variant per clip
  assert not p.report.skipped  # the still trains too, with an empty condition
  assert p.cache_report.pixel_built == {"condition": 2} and p.cache_report.latents_built == 3
  assert "built 3 latents, 2 conditions, 1 weight maps" in p.cache_report.summary()
  assert len(list((tmp_path / "cache/condition").rglob("*.safetensors"))) == 2
  still = next(i for i, e in enumerate(p.entries) if e.item.media.name == "still.png")
  assert not read_variant(p.cache_plan, still, True)["condition"].any()

  # Each clip's cached row against the condition of its own first frame, cropped and flipped as
  # its latents were (both clips share a bucket: one encode of the two first frames).
  clips = [e for e in p.entries if e.item.num_frames > 1]
  rows = [read_variant(p.cache_plan, p.entries.index(e), True) for e in clips]
  firsts = []
  for e in clips:
    geo = plan_geometry(e.item, e.resolution, ds, np.random.default_rng(0), flip=True)
    pixels = read_pixels(e.item, geo)
    unflipped = read_pixels(e.item, plan_geometry(e.item, e.resolution, ds,
                                                  np.random.default_rng(0), flip=False))
    assert not np.array_equal(pixels[0], unflipped[0])  # the flip matters to frame 0
    firsts.append(pixels[0])
  want = wan_jax.i2v_condition(vae, jnp.asarray(np.stack(firsts), jnp.float32) / 127.5 - 1.0, 5)
  vcfg = tiny_vae()
  for row, w in zip(rows, np.asarray(want)):
    cond = row["condition"]
    assert cond.shape == (*row["latent_mean"].shape[:3], 20) and cond.shape[0] == 2  # 5 frames
    # Mask channels: frame 0 given (4 channels of latent frame 0), the rest not.
    assert (cond[0, ..., :4] == 1).all() and (cond[1:, ..., :4] == 0).all()
    np.testing.assert_allclose(cond, w, rtol=1e-5, atol=1e-5)
    # The VAE is causal: latent frame 0 of the clip sees pixel frame 0 only, so the condition's
    # latents there are the clip's own (normalised): the same crop, flip and first frame.
    first = normalize_latents(row["latent_mean"][:1], vcfg.latents_mean, vcfg.latents_std)
    np.testing.assert_allclose(cond[:1, ..., 4:], np.asarray(first), rtol=1e-4, atol=1e-4)
  batches = [next(it) for it in [iter(p.dataset)] for _ in range(3)]
  shapes = {b["form"][0]: b["condition"].shape for b in batches}
  assert shapes["clip"] == (1, *rows[0]["condition"].shape)  # and it reaches a batch
  assert sorted(e.item.media.name for e in p.entries) == ["a.mp4", "b.mp4", "still.png"]


def _run(cfg, tmp_path):
  cfg.cache.dir = str(tmp_path / "cache")
  return train(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_preview_image_settings_are_one_line_errors(tmp_path):
  t2v = i2v_config()
  t2v.model.arch = "tiny"
  t2v.preview.images = ["x.png"]
  with pytest.raises(ValueError, match=r"^preview.images is for image-to-video models; "
                                       r"model.arch='tiny' is text-to-video"):
    _run(t2v, tmp_path)
  two = i2v_config()
  two.preview.prompts = ["a", "b"]
  two.preview.images = [str(tmp_path / "missing.png")]
  with pytest.raises(ValueError, match="one image per prompt for image-to-video: 2 prompts, 1"):
    _run(two, tmp_path)
  gone = i2v_config()
  gone.preview.images = [str(tmp_path / "missing.png")]
  with pytest.raises(ValueError, match=r"missing.png cannot be read"):
    _run(gone, tmp_path)


def test_a_checkpoint_of_the_other_task_is_refused_before_loading(diffusers_release):
  cfg = i2v_config("")
  cfg.model.name_or_path = str(diffusers_release)  # a text-to-video release
  with pytest.raises(ValueError, match=r"trains image-to-video, but .* holds text-to-video "
                                       r"experts \(Wan 2.2 T2V-A14B\); set "
                                       r"model.arch='wan22_t2v_a14b'"):
    loading.check_checkpoint_task(cfg)
  assert loading.task(cfg) is IMAGE_TO_VIDEO and cfg.model.boundary == 0.9


@pytest.mark.slow
def test_the_readmes_image_to_video_demo_runs_verbatim_and_trains_both_experts(tmp_path):
  """`python launch.py --config configs/wan22_i2v_masked.py:tiny`, as the README writes it: no
  --workdir (it once answered "--workdir is required"), from a checkout's root; it writes under
  runs/demo_i2v, trains both 36-channel experts on cached conditions, previews from the
  generated start image, and ends on the summary's last line with nothing after it.

  Merged from two launches (the verbatim demo, and a 4-step run of it with save.every=2): the
  numbered save that skips the untrained expert is asserted in test_run_exits."""
  (tmp_path / "configs").symlink_to(REPO / "configs")  # a checkout's root, outside the tests'
  result = launch("--config", "configs/wan22_i2v_masked.py:tiny", cwd=tmp_path)
  assert_quiet(result, 0, bars=True)
  out = result.stdout
  # One condition per clip and flip (the demo flips half its batches; each variant is cached).
  conditions = re.search(r"(\d+) conditions", out)
  assert "3 items, 0 skipped" in out and conditions and int(conditions.group(1)) == 6, out
  assert "trained 24 steps" in out and "nan" not in out.lower()
  run = tmp_path / "runs/demo_i2v"
  assert out.rstrip().endswith(str(run / "checkpoints/24"))  # the last line
  cache = Path(os.environ["WAN_JAX_CACHE"])  # the tests' private cache (conftest)
  assert len([f for f in cache.rglob("*.safetensors") if "condition" in f.parts]) == 6
  assert sorted(p.name for p in (run / "lora").iterdir()) == sorted(
      f"demo_i2v_lora{step}_{expert}_noise.safetensors"
      for step in ("_000012", "") for expert in ("high", "low"))
  assert [v.name for v in sorted((run / "previews").glob("*.mp4"))] == [
      "step_000012_0.mp4", "step_000024_0.mp4"]
  video = iio.imread(run / "previews/step_000024_0.mp4", plugin="pyav")
  assert video.shape == (5, 64, 64, 3)
  described = (run / "previews/step_000024.txt").read_text()
  assert "shift 5.0, guidance low/high 3.5/3.5" in described
  assert f"(from {run / 'demo_data/preview_start_64x64.png'})" in described
  # A bar, not minutes of silence (drawn at 0% when it opens; the updates after it may come
  # faster than tqdm redraws, and the bar is cleared when done).
  assert "previews at step 12:   0%" in result.stderr
  # The final LoRA is a trained adapter for the 36-channel expert.
  model = wan_jax.WanTransformer(wan_jax.tiny_i2v(), rngs=nnx.Rngs(0))
  lora.add_lora(model, 4, 8.0, seed=0)
  export.load_lora(model, run / "lora/demo_i2v_lora_low_noise.safetensors")
  b = lora.block_linear(model, "ffn.0").lora_b
  assert np.abs(np.asarray(b[...])).max() > 0  # B starts at zero: training moved it

"""First-last-frame (FLF) training for image-to-video: a data set's `last_frame_prob` makes its
clips' rows condition on their first AND last frames. The condition a row trains on, read through
the real cache and pipeline, equals diffusers' `WanImageToVideoPipeline.prepare_latents` with
`last_image`; a probability gives both kinds of rows, drawn per row the same after a resume and
counted in the summaries; turning the option on encodes only the new files; a tiny run with it
trains and resumes exactly; preview.last_images is checked in one line."""

from __future__ import annotations

import collections
from pathlib import Path

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from flax import nnx
from PIL import Image
from reference_codecs import make_vae

import wan_jax
from wan_jax.data.caches import CacheSettings, read_variant
from wan_jax.data.config import dataset_config
from wan_jax.data.demo import make_demo_tokenizer
from wan_jax.data.examples import read_pixels
from wan_jax.data.folders import DataError
from wan_jax.data.pipeline import FORM_CLIP, FORM_FIRST_LAST, FORM_IMAGE, build_pipeline
from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
from wan_jax.model.vae import WanVAE
from wan_jax.tasks import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from wan_jax.train.run.summary import RunSummary
from wan_jax.weights import vae_keys
from wan_jax.weights.assemble import assemble
from helpers import get_config, losses, quiet

FLF = "first_last_condition"  # the cache kind


@pytest.fixture(scope="module")
def ref_vae():
  return make_vae(base_dim=8, seed=7)


@pytest.fixture(scope="module")
def vae(ref_vae) -> WanVAE:
  """Our VAE holding the diffusers VAE's weights."""
  sd = {k: v.numpy() for k, v in ref_vae.state_dict().items()}
  cfg = vae_keys.infer_config({k: v.shape for k, v in sd.items()})
  params = dict(vae_keys.diffusers_to_ours(k, v) for k, v in sd.items())
  return assemble(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), params)


def _folder(root: Path) -> Path:
  """Two 9-frame clips (48x80: H != W) whose frames all differ, and a still image."""
  media = root / "media"
  if media.exists():
    return media
  media.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    frames = rng.integers(0, 255, (9, 48, 80, 3), np.uint8)
    iio.imwrite(media / f"{name}.mp4", frames, plugin="pyav", fps=16, codec="libx264")
    (media / f"{name}.txt").write_text(f"clip {name}")
  Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(media / "still.png")
  return media


def _pipeline(root: Path, vae, batch: int = 1, seed: int = 0, **dataset_kw):
  ds = dataset_config(folder_path=str(_folder(root / "data")), num_frames=5, resolution=32,
                      caption_dropout_rate=0.0, **dataset_kw)
  tok = make_demo_tokenizer(root / "tok")
  return build_pipeline([ds], global_batch=batch, seed=seed, progress=False, task=IMAGE_TO_VIDEO,
                        caches=CacheSettings(root / "cache", "ref-vae-7", "tiny-umt5-3", 24),
                        load_vae=lambda: vae,
                        load_text=lambda: (wan_jax.load_tokenizer(tok),
                                           UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(3))))


def _batches(p, n: int, state=None) -> list[dict]:
  it = iter(p.dataset)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)]


def _reference(ref_vae, first: np.ndarray, last: np.ndarray, num_frames: int) -> np.ndarray:
  """diffusers' condition of one clip's end frames [H, W, 3] in [-1, 1], channels-last."""
  pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=None)
  assert not pipe.config.expand_timesteps  # the Wan 2.2 A14B path
  h, w = first.shape[:2]
  to_torch = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # [1, 3, H, W]
  latent_frames = (num_frames - 1) // 4 + 1
  with torch.no_grad():
    _, condition = pipe.prepare_latents(
        to_torch(first), 1, 16, h, w, num_frames, dtype=torch.float32,
        device=torch.device("cpu"), latents=torch.zeros(1, 16, latent_frames, h // 8, w // 8),
        last_image=to_torch(last))
  return condition.permute(0, 2, 3, 4, 1).numpy()[0]


def rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.slow
def test_an_always_clip_trains_on_diffusers_first_last_condition(tmp_path, vae, ref_vae):
  """last_frame_prob=1: every clip row's `condition`, as a batch holds it, is diffusers'
  prepare_latents(first frame, last_image=last frame) of the frames its latents were cut from
  (crop, flip and frame selection included); the still image keeps its empty condition."""
  p = _pipeline(tmp_path, vae, last_frame_prob=1.0, flip_prob=1.0)
  assert p.cache_report.pixel_built == {"condition": 2, FLF: 2}
  assert "2 conditions, 2 first-last conditions" in p.cache_report.summary()
  assert "2 of 2 clips train first-last frame: conditioned on their first and last frames in " \
         "every row" in p.summary()
  forms = collections.Counter()
  for batch in _batches(p, 6):
    entry = next(e for e in p.entries if e.item.caption == batch["caption"][0]
                 or (e.item.num_frames == 1 and batch["form"][0] == FORM_IMAGE))
    form = batch["form"][0]
    forms[form] += 1
    if entry.item.num_frames == 1:
      assert form == FORM_IMAGE and not batch["condition"].any()
      continue
    assert form == FORM_FIRST_LAST
    geo = p.cache_plan.variants[p.entries.index(entry)][True].geometry
    pixels = read_pixels(entry.item, geo).astype(np.float32) / 127.5 - 1.0  # [5, H, W, 3]
    want = _reference(ref_vae, pixels[0], pixels[-1], pixels.shape[0])
    got = batch["condition"][0]
    assert got.shape == want.shape == (2, *batch["latent_mean"].shape[2:4], 20)
    np.testing.assert_array_equal(got[..., :4], want[..., :4])
    assert (got[0, ..., :4] == 1).all() and (got[1, ..., :4] == [0, 0, 0, 1]).all()
    assert rel_error(got[..., 4:], want[..., 4:]) < 1e-4
  assert forms[FORM_FIRST_LAST] >= 2 and set(forms) <= {FORM_FIRST_LAST, FORM_IMAGE}, forms


@pytest.mark.slow
def test_a_probability_draws_both_kinds_per_row_the_same_after_a_resume(tmp_path, vae):
  """Off, no first-last file is planned or read; turned on, only those files are encoded; a
  probability gives first-frame and first-last rows, drawn per (seed, batch, row), and the
  run summary and data notice count them."""
  off = _pipeline(tmp_path, vae, batch=2)
  assert not any(kind == FLF for by_flip in off.cache_plan.variants
                 for v in by_flip.values() for kind, _ in v.files())
  assert not (tmp_path / "cache" / FLF).exists() and "first-last" not in off.summary()

  p = _pipeline(tmp_path, vae, batch=2, last_frame_prob=0.5)
  assert p.cache_report.pixel_built == {FLF: 2} and p.cache_report.latents_built == 0
  assert "2 of 2 clips train first-last frame: conditioned on their first and last frames in " \
         "50% of their rows, on their first frame otherwise" in p.summary()
  clips = [i for i, e in enumerate(p.entries) if e.item.num_frames > 1]
  first = {i: read_variant(p.cache_plan, i, False)["condition"] for i in clips}
  both = {i: read_variant(p.cache_plan, i, False, first_last=True)["condition"] for i in clips}
  batches = _batches(p, 12)
  summary = RunSummary(count_forms=True)
  for b in batches:
    summary.count_rows(b)
    for row, form in enumerate(b["form"]):
      cond = b["condition"][row]
      if form == FORM_IMAGE:
        assert not cond.any()
        continue
      match = [i for i in clips if np.array_equal(cond, (both if form == FORM_FIRST_LAST
                                                         else first)[i])]
      assert match and form in (FORM_CLIP, FORM_FIRST_LAST)
      assert cond[1, ..., 3].all() == (form == FORM_FIRST_LAST)  # the last frame's mask channel
  forms = collections.Counter(f for b in batches for f in b["form"])
  assert forms[FORM_CLIP] > 0 and forms[FORM_FIRST_LAST] > 0, forms
  assert summary.rows_by_form == dict(forms)
  assert f"{forms[FORM_CLIP]} clip, {forms[FORM_FIRST_LAST]} clip on its first and last " \
         "frames" in summary.forms_text()

  it = iter(p.dataset)
  for _ in range(5):
    next(it)
  for a, b in zip(batches[5:], _batches(p, 7, it.get_state())):
    assert list(a["form"]) == list(b["form"])
    np.testing.assert_array_equal(a["condition"], b["condition"])
  # Another seed draws other rows; the same seed again, the same rows.
  again = _pipeline(tmp_path, vae, batch=2, last_frame_prob=0.5)
  assert [list(b["form"]) for b in _batches(again, 12)] == [list(b["form"]) for b in batches]


def test_the_option_is_refused_where_it_cannot_apply(tmp_path):
  media = _folder(tmp_path / "data")
  with pytest.raises(DataError, match=r"^datasets\[0\].last_frame_prob conditions clips on their "
                                      r"last frame too, an image-to-video option; this run "
                                      r"trains text-to-video: set it to 0$"):
    build_pipeline([dataset_config(folder_path=str(media), last_frame_prob=0.5, num_frames=5)],
                   1, seed=0, task=TEXT_TO_VIDEO)
  for bad in (1.5, -0.1, "always"):
    with pytest.raises(ValueError, match=r"^datasets\[0\].last_frame_prob must be a number in "
                                         r"\[0, 1\]"):
      build_pipeline([dataset_config(folder_path=str(media), last_frame_prob=bad)], 1, seed=0,
                     task=IMAGE_TO_VIDEO)


def _i2v_config(steps: int) -> ml_collections.ConfigDict:
  return quiet(get_config("tiny", file="wan22_i2v_masked.py"), steps)


@pytest.mark.slow
def test_a_tiny_run_trains_first_last_and_resumes_exactly(tmp_path):
  """Half the clip rows on their first and last frames: 2 steps, then a resume to 4, loses
  nothing against 4 straight steps (losses and row counts), and says how rows trained."""
  from wan_jax.data.demo import DEMO_CLIP_SIZE, make_clip_dataset
  from wan_jax.train.run.trainer import train

  media, masks = make_clip_dataset(tmp_path / "data", *DEMO_CLIP_SIZE, 5, clips=3)

  def config(steps):
    cfg = _i2v_config(steps)
    cfg.checkpoint.every = 2
    cfg.cache.dir = str(tmp_path / "cache")  # one cache for all runs
    cfg.datasets[0].folder_path, cfg.datasets[0].mask_path = str(media), str(masks)
    cfg.datasets[0].last_frame_prob = 0.5
    return cfg

  straight = train(config(4), tmp_path / "straight", progress=False)
  train(config(2), tmp_path / "split", progress=False)
  split = train(config(4), tmp_path / "split", progress=False)
  assert split.resumed_from == 2 and straight.skipped_steps == split.skipped_steps == 0
  want, got = losses(tmp_path / "straight"), losses(tmp_path / "split")
  assert sorted(want) == sorted(got) == [1, 2, 3, 4]
  assert [got[s] for s in range(1, 5)] == [want[s] for s in range(1, 5)]  # exactly
  forms = straight.rows_by_form
  assert split.rows_by_form == forms and sum(forms.values()) == 8  # 4 steps of 2 rows
  assert forms.get(FORM_CLIP, 0) > 0 and forms.get(FORM_FIRST_LAST, 0) > 0, forms
  assert (f"image-to-video rows by how they trained: {forms[FORM_CLIP]} clip, "
          f"{forms[FORM_FIRST_LAST]} clip on its first and last frames") in split.text(None)
  cached = {p.parent.parent.name for p in (tmp_path / "cache").rglob("*.safetensors")}
  assert FLF in cached and "condition" in cached


def test_a_resume_with_another_last_frame_setting_is_refused(tmp_path):
  """The option changes which condition rows read: another run. Runs saved before it existed
  had it off."""
  from wan_jax.train.run.resume import check_resume, resume_settings

  cfg = _i2v_config(4)
  saved = resume_settings(cfg)
  old = {**saved, "datasets": [{k: v for k, v in d.items() if k != "last_frame_prob"}
                               for d in saved["datasets"]]}
  check_resume(old, cfg, 1, tmp_path)
  cfg.datasets[0].last_frame_prob = 0.5
  for before in (saved, old):
    with pytest.raises(ValueError, match="other settings for datasets"):
      check_resume(before, cfg, 1, tmp_path)


def test_preview_last_images_are_checked_in_one_line(tmp_path):
  from wan_jax.train.run.validate import check_preview_images

  start, end = tmp_path / "start.png", tmp_path / "end.png"
  for path in (start, end):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)

  def config(images, lasts, prompts=("a", "b"), arch="tiny_i2v"):
    cfg = _i2v_config(1)
    cfg.model.arch = arch
    cfg.preview.every = 1
    cfg.preview.prompts = list(prompts)
    cfg.preview.images = [str(x) for x in images]
    cfg.preview.last_images = [str(x) for x in lasts]
    return cfg

  check_preview_images(config([start, start], [end, ""]), IMAGE_TO_VIDEO)  # one per prompt
  check_preview_images(config([start, start], []), IMAGE_TO_VIDEO)  # none at all
  cases = [
      (config([start, start], [end]), r"^preview.last_images needs one entry per prompt \(an "
       r"image, or \"\" for none\) or none at all: 2 prompts, 1 last images$"),
      (config([start, start], [end, tmp_path / "gone.png"]),
       r"^preview.last_images: .*gone.png cannot be read"),
      (config([start, start], [end, tmp_path / "notes.txt"]),
       r"^preview.last_images: .*notes.txt is not an image"),
      (config([start], [end, end]), r"^preview.last_images\[1\] \(.*end.png\) has no start "
       r"image: a last image ends a clip that preview.images\[1\] starts$"),
  ]
  short = config([start, start], [end, ""])
  short.preview.num_frames = 1
  cases.append((short, r"^preview.last_images needs preview.num_frames >= 5"))
  for cfg, message in cases:
    with pytest.raises(ValueError, match=message):
      check_preview_images(cfg, IMAGE_TO_VIDEO)
  with pytest.raises(ValueError, match=r"^preview.last_images is for first-last-frame \(I2V-A14B\) "
                                       r"models; "
                                       r"model.arch='tiny' is text-to-video"):
    check_preview_images(config([], [end], prompts=["a"], arch="tiny"), TEXT_TO_VIDEO)


@pytest.mark.slow
def test_a_preview_ends_on_its_last_image(tmp_path):
  """preview_conditions: the start image alone, or with its last image (first-last frame)."""
  import jax.numpy as jnp
  from wan_jax.model.vae_config import tiny_vae
  from wan_jax.train.outputs.preview import preview_conditions

  vae = WanVAE(tiny_vae(), rngs=nnx.Rngs(2))
  rng = np.random.default_rng(0)
  start, end = tmp_path / "start.png", tmp_path / "end.png"
  for path in (start, end):
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(path)
  plain, ends = preview_conditions(IMAGE_TO_VIDEO, vae, [start, start], ["", end], 16, 16, 5)
  unit = lambda path: jnp.asarray(np.asarray(Image.open(path)), jnp.float32)[None] / 127.5 - 1
  np.testing.assert_allclose(plain, wan_jax.i2v_condition(vae, unit(start), 5), atol=1e-5)
  np.testing.assert_allclose(ends, wan_jax.i2v_condition(vae, unit(start), 5, unit(end)),
                             atol=1e-5)
  assert (ends[0, 1, ..., 3] == 1).all() and not plain[0, 1, ..., :4].any()
  assert preview_conditions(TEXT_TO_VIDEO, vae, [], [], 16, 16, 5) is None

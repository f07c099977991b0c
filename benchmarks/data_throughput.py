"""Items per second of the Grain pipeline on this machine: raw decoding, and cached latents.

Makes a folder of JPEG images (1280x720) and MP4 clips (832x480, 81 frames at 16 fps is the
default clip) with masks, then times batches through `build_pipeline` with 0..N worker
processes. With --cached it also builds the latent and prompt caches and times batches read from
them: the encoders are narrow random ones (the tiny VAE, a tiny umT5 with the real 4096-wide
output) whose outputs have exactly the real shapes, so the files and batches are real-size.

  python benchmarks/data_throughput.py --images 64 --clips 8 --workers 0 2 --cached
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from wan_jax.data.config import dataset_config
from wan_jax.data.folders import scan_dataset
from wan_jax.data.pipeline import build_pipeline


def make_folder(root: Path, images: int, clips: int, frames: int) -> tuple[Path, Path, Path]:
  img_dir, clip_dir, masks = root / "images", root / "clips", root / "masks"
  for d in (img_dir, clip_dir, masks):
    d.mkdir()
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (720, 1280, 3), np.uint8)
  for i in range(images):
    Image.fromarray(np.roll(base, i, axis=1)).save(img_dir / f"img{i}.jpg", quality=90)
    Image.new("L", (1280, 720), 255).save(masks / f"img{i}.png")
  small = rng.integers(0, 255, (480, 832, 3), np.uint8)
  for i in range(clips):
    video = np.stack([np.roll(small, 4 * t + i, axis=1) for t in range(frames)])
    iio.imwrite(clip_dir / f"clip{i}.mp4", video, plugin="pyav", fps=16, codec="libx264")
    Image.new("L", (832, 480), 255).save(masks / f"clip{i}.png")
  return img_dir, clip_dir, masks


def rate(datasets, batch: int, workers: int, batches: int) -> float:
  pipeline = build_pipeline(datasets, batch, seed=0, num_workers=workers)
  it = iter(pipeline.dataset)
  next(it)  # start-up (worker processes) out of the figure
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def cached_rate(datasets, batch: int, workers: int, batches: int, cache_root: Path,
                tokenizer_dir: Path) -> tuple[float, float]:
  """(items/s read from the caches, seconds the build took: 0 when they were already built)."""
  from flax import nnx

  from wan_jax import load_tokenizer
  from wan_jax.data.caches import CacheSettings
  from wan_jax.data.demo import make_demo_tokenizer
  from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
  from wan_jax.model.vae import WanVAE
  from wan_jax.model.vae_config import tiny_vae

  settings = CacheSettings(root=cache_root, vae_id="bench-tiny-vae", text_id="bench-wide-umt5")
  start = time.perf_counter()
  pipeline = build_pipeline(
      datasets, batch, seed=0, num_workers=workers, caches=settings, progress=False,
      load_vae=lambda: WanVAE(tiny_vae(), rngs=nnx.Rngs(0)),
      load_text=lambda: (load_tokenizer(make_demo_tokenizer(tokenizer_dir)),
                         UMT5Encoder(umt5_tiny().replace(d_model=4096), rngs=nnx.Rngs(1))))
  built = time.perf_counter() - start if pipeline.cache_report.latents_built else 0.0
  it = iter(pipeline.dataset)
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start), built


def scan_seconds(datasets, cache_dir: Path) -> float:
  start = time.perf_counter()
  scan_dataset(datasets[0], cache_dir=cache_dir)
  return time.perf_counter() - start


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=64)
  p.add_argument("--clips", type=int, default=8)
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  p.add_argument("--batches", type=int, default=8)
  p.add_argument("--cached", action="store_true", help="also time batches from the caches")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    img_dir, clip_dir, masks = make_folder(Path(tmp), args.images, args.clips, args.frames)
    images = [dataset_config(folder_path=str(img_dir), mask_path=str(masks), resolution=1024)]
    clips = [dataset_config(folder_path=str(clip_dir), mask_path=str(masks), resolution=640,
                            num_frames=args.frames)]
    for label, ds in (("images", images), ("clips", clips)):
      with tempfile.TemporaryDirectory() as cache:
        first = scan_seconds(ds, Path(cache))
        again = scan_seconds(ds, Path(cache))
      print(f"scan of the {label}: {first:.2f} s decoding everything, {again:.2f} s from the "
            "probe cache")
    rows = []
    for workers in args.workers:
      img_rate = rate(images, 4, workers, args.batches)
      clip_rate = rate(clips, 1, workers, min(args.batches, args.clips))
      rows.append({"workers": workers, "images_per_s": img_rate, "clips_per_s": clip_rate})
      print(f"workers {workers}: {img_rate:6.1f} images/s (1280x720 jpg -> 1024 bucket), "
            f"{clip_rate:5.2f} clips/s ({args.frames} frames 832x480 mp4 -> 640 bucket)")
    if args.cached:
      cache, tok = Path(tmp) / "cache", Path(tmp) / "tokenizer"
      for workers in args.workers:
        img_rate, img_build = cached_rate(images, 4, workers, args.batches, cache, tok)
        clip_rate, clip_build = cached_rate(clips, 1, workers, min(args.batches, args.clips),
                                            cache, tok)
        rows.append({"workers": workers, "cached_images_per_s": img_rate,
                     "cached_clips_per_s": clip_rate})
        built = (f" (cache build: {img_build:.1f} s images, {clip_build:.1f} s clips)"
                 if img_build or clip_build else "")
        print(f"workers {workers}, cached: {img_rate:6.1f} images/s, {clip_rate:6.2f} clips/s "
              f"(latents + weights + 512x4096 context per item){built}")
    print(json.dumps(rows))


if __name__ == "__main__":
  main()

"""Items per second of the raw-decoding Grain pipeline on this machine.

Makes a folder of JPEG images (1280x720) and MP4 clips (832x480, 81 frames at 16 fps is the
default clip) with masks, then times batches through `build_pipeline` with 0..N worker
processes. Cached latents are timed by the caches' own benchmark once they exist.

  python benchmarks/data_throughput.py --images 64 --clips 8 --workers 0 2
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
    print(json.dumps(rows))


if __name__ == "__main__":
  main()

"""wan-jax entry point (a placeholder until training lands: see the issue on the train step).

Today it runs everything that exists on the built-in demo, on the CPU: generates the demo data set
(images, a clip, masks, captions) under --workdir, scans it and draws batches through the Grain
pipeline, then runs the tiny Wan transformer's two experts behind the timestep switch on latents
of each batch's shape (the VAE that turns pixels into latents arrives with its own issue).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import wan_jax
from wan_jax.data.config import dataset_config
from wan_jax.data.demo import make_demo_dataset
from wan_jax.data.pipeline import build_pipeline


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="tiny", help="model preset (tiny | t2v_a14b)")
  parser.add_argument("--workdir", type=Path, default=Path("workdir/demo"))
  parser.add_argument("--batches", type=int, default=3)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if args.config != "tiny":
    print("only the tiny demo runs until training lands", file=sys.stderr)
    return 2

  media, masks = make_demo_dataset(args.workdir / "data")
  datasets = [dataset_config(folder_path=str(media), mask_path=str(masks), num_frames=5,
                             resolution=64, default_caption="a coloured ball",
                             caption_dropout_rate=0.0, mask_min_value=0.1)]
  pipeline = build_pipeline(datasets, global_batch=2, seed=0)
  print(f"data: {media}\n{pipeline.summary()}")

  cfg = wan_jax.tiny()
  model = wan_jax.DualWanTransformer(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)),
                                     wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(1)))
  forward = nnx.jit(lambda m, x, t, c: m(x, t, c))
  batches = iter(pipeline.dataset)
  for step in range(args.batches):
    batch = next(batches)
    b, f, h, w, _ = batch["pixels"].shape
    latent_shape = (b, (f - 1) // 4 + 1, h // 8, w // 8, cfg.in_channels)
    assert batch["weights"].shape == latent_shape[:4], (batch["weights"].shape, latent_shape)
    t = 950.0 if step % 2 == 0 else 300.0
    latents = jax.random.normal(jax.random.key(step), latent_shape)
    context = jax.random.normal(jax.random.key(100 + step), (b, 7, cfg.text_dim))
    start = time.time()
    v = forward(model, latents, jnp.full((b,), t), context)
    expert = "high-noise" if t >= model.threshold else "low-noise"
    weighted = float((batch["weights"][..., None] * jnp.abs(v)).sum() / batch["weights"].sum())
    print(f"batch {step}: pixels {tuple(batch['pixels'].shape)}, captions {list(batch['caption'])}"
          f"\n  t={t:6.1f} -> {expert} expert: velocity {tuple(v.shape)}, mask-weighted "
          f"mean |v| {weighted:.4f}, {time.time() - start:.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

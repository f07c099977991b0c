"""wan-jax entry point (a placeholder until training lands: see the issue on the train step).

Today it runs everything that exists on the built-in demo, on the CPU: generates the demo data set
(images, a clip, masks, captions) and a word-level tokenizer under --workdir, draws batches through
the Grain pipeline, encodes the pixels with a tiny VAE and the captions with the tokenizer and a
tiny umT5, runs the two tiny Wan experts behind the timestep switch on them, and decodes the
latents back to video. All models are random (nothing is downloaded).
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
from wan_jax.data.demo import make_demo_dataset, make_demo_tokenizer
from wan_jax.model.umt5 import umt5_tiny
from wan_jax.model.vae import decode_latents, encode_video
from wan_jax.model.vae_config import tiny_vae
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
  vae = wan_jax.WanVAE(tiny_vae(), rngs=nnx.Rngs(2))
  tokenizer = wan_jax.load_tokenizer(make_demo_tokenizer(args.workdir / "tokenizer"))
  text_encoder = wan_jax.UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(3))
  forward = nnx.jit(lambda m, x, t, c: m(x, t, c))
  batches = iter(pipeline.dataset)
  for step in range(args.batches):
    batch = next(batches)
    b = batch["pixels"].shape[0]
    start = time.time()
    pixels = jnp.asarray(batch["pixels"], jnp.float32) / 127.5 - 1.0
    latents = encode_video(vae, pixels, sample=True, key=jax.random.key(step))
    assert batch["weights"].shape == latents.shape[:4], (batch["weights"].shape, latents.shape)
    context = wan_jax.encode_prompts(list(batch["caption"]), tokenizer, text_encoder,
                                     max_length=cfg.text_len)
    t = 950.0 if step % 2 == 0 else 300.0
    v = forward(model, latents, jnp.full((b,), t), context)
    decoded = decode_latents(vae, latents)
    expert = "high-noise" if t >= model.threshold else "low-noise"
    weighted = float((batch["weights"][..., None] * jnp.abs(v)).sum() / batch["weights"].sum())
    print(f"batch {step}: pixels {tuple(batch['pixels'].shape)}, captions {list(batch['caption'])}"
          f"\n  VAE latents {tuple(latents.shape)}, prompt embeddings {tuple(context.shape)}"
          f"\n  t={t:6.1f} -> {expert} expert: velocity {tuple(v.shape)}, mask-weighted "
          f"mean |v| {weighted:.4f}; decoded back to {tuple(decoded.shape)}; "
          f"{time.time() - start:.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

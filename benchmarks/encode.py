"""Encoding cost with random weights: the VAE on one clip, umT5-XXL on a batch of prompts.

On one H200 (the issue's figure): the full VAE (base 96) encoding one 81x480x832 clip and decoding
it back, and umT5-XXL (24 layers, 5.68B parameters) encoding a batch of 512-token prompts, both in
bf16 (and the VAE in fp32, its reference precision). Reports compile time, median time over
--steps calls and the device's peak memory after each part.

  python benchmarks/encode.py                                         # full size, a big GPU
  python benchmarks/encode.py --frames 5 --height 64 --width 96 --t5-layers 1 --prompts 1  # CPU
  python benchmarks/encode.py --memory-only --height 720 --width 1280  # compiled memory, no run

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aot_memory import analyse  # noqa: E402
from forward import commit, peak_memory_gib, timed  # noqa: E402

import wan_jax  # noqa: E402
from wan_jax.model.umt5 import umt5_xxl  # noqa: E402
from wan_jax.model.vae import decode_latents, encode_video  # noqa: E402
from wan_jax.model.latent_geometry import WAN21  # noqa: E402
from wan_jax.model.vae_config import wan21_vae  # noqa: E402


def bench_vae(args, dtype: str) -> dict:
  vae = wan_jax.WanVAE(wan21_vae(param_dtype=dtype, compute_dtype=dtype), rngs=nnx.Rngs(0))
  video = jax.random.uniform(jax.random.key(1), (1, args.frames, args.height, args.width, 3),
                             jnp.float32, -1, 1)
  enc_compile, enc_times, latents = timed(encode_video, vae, video, steps=args.steps)
  enc_peak = peak_memory_gib()
  dec_compile, dec_times, decoded = timed(decode_latents, vae, latents, steps=args.steps)
  assert decoded.shape == video.shape and bool(jnp.isfinite(decoded).all())
  return {"part": f"vae {dtype}", "shape": list(video.shape), "latents": list(latents.shape),
          "encode_compile_s": enc_compile, "encode_s": statistics.median(enc_times),
          "encode_peak_gib": enc_peak, "decode_compile_s": dec_compile,
          "decode_s": statistics.median(dec_times), "peak_gib": peak_memory_gib()}


def vae_memory(args, dtype: str) -> list[dict]:
  """Compiled temp memory of encode and decode (XLA's own accounting; no run, any backend) at
  growing frame counts: with the chunk scan it should not grow with the clip's length."""
  vae = nnx.eval_shape(lambda: wan_jax.WanVAE(wan21_vae(param_dtype=dtype, compute_dtype=dtype),
                                              rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(vae)
  encode = lambda s, x: nnx.merge(graphdef, s).encode(x)
  decode = lambda s, z: nnx.merge(graphdef, s).decode(z)
  rows = []
  for frames in (5, 21, 81):
    video = jax.ShapeDtypeStruct((1, frames, args.height, args.width, 3), jnp.float32)
    latents = jax.ShapeDtypeStruct((1, *WAN21.latent_shape(frames, args.height, args.width)),
                                   jnp.float32)
    enc, dec = analyse(encode, state, video), analyse(decode, state, latents)
    rows.append({"part": f"vae {dtype} compiled memory", "frames": frames,
                 "encode_temp_gib": enc["temp_gib"], "decode_temp_gib": dec["temp_gib"],
                 "input_gib": enc["argument_gib"]})
  return rows


def bench_t5(args) -> dict:
  cfg = umt5_xxl(num_layers=args.t5_layers)
  encoder = wan_jax.UMT5Encoder(cfg, rngs=nnx.Rngs(0))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(encoder)))
  ids = jax.random.randint(jax.random.key(2), (args.prompts, 512), 3, cfg.vocab_size)
  lengths = jnp.linspace(40, 512, args.prompts).astype(jnp.int32)
  mask = (jnp.arange(512)[None, :] < lengths[:, None]).astype(jnp.int32)
  run = nnx.jit(lambda e, i, m: e(i, m))
  compile_s, times, out = timed(run, encoder, ids, mask, steps=args.steps)
  assert bool(jnp.isfinite(out).all())
  return {"part": "umt5 bfloat16", "layers": cfg.num_layers, "params": params,
          "shape": [args.prompts, 512], "compile_s": compile_s,
          "encode_s": statistics.median(times), "peak_gib": peak_memory_gib()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--vae-dtypes", default="bfloat16,float32")
  parser.add_argument("--t5-layers", type=int, default=24)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--skip", default="", help="vae or t5")
  parser.add_argument("--memory-only", action="store_true",
                      help="only the VAE's compiled memory at 5/21/81 frames (no run)")
  args = parser.parse_args()
  rows = []
  if args.memory_only:
    rows += [r for d in args.vae_dtypes.split(",") for r in vae_memory(args, d)]
  elif "vae" not in args.skip:
    rows += [bench_vae(args, d) for d in args.vae_dtypes.split(",")]
  if "t5" not in args.skip and not args.memory_only:
    rows.append(bench_t5(args))
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), commit {commit()}")
  for r in rows:
    print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
  print(json.dumps({"device": device.device_kind, "commit": commit(), "rows": rows}))


if __name__ == "__main__":
  main()

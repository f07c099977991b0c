"""Forward pass of one Wan expert with random weights: time, peak memory, attention agreement.

On one H200 (the issue's figure): the full 14B expert in bf16 at 480x832x81 (21x60x104 latents,
32,760 tokens) with cuDNN attention, then the same inputs through the chunked attention path on a
slice of the model (its first --check-layers blocks) to show the two implementations agree.

  python benchmarks/forward.py                                  # full size, needs a big GPU
  python benchmarks/forward.py --preset tiny --frames 5 --height 64 --width 96   # CPU smoke run

Prints a table and one JSON line. Weights are random normal (never zeros).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import wan_jax
from wan_jax.model.config import PRESETS
from wan_jax.model.latent_geometry import WAN21
from wan_jax.variants import VARIANTS

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "unknown"
  except OSError:
    return "unknown"


def peak_memory_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def timed(fn, *args, steps: int) -> tuple[float, list[float], jax.Array]:
  """(first call incl. compile, later call times, the last output)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times, out


def slice_of(model: wan_jax.WanTransformer, small: wan_jax.WanConfig):
  """(graphdef, state) of a model with `small`'s depth sharing `model`'s first blocks."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: wan_jax.WanTransformer(small, rngs=nnx.Rngs(0))))
  pure = nnx.state(model).to_pure_dict()
  pure["blocks"] = jax.tree.map(lambda a: a[:small.num_layers], pure["blocks"])
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="t2v_a14b", choices=sorted(PRESETS))
  p.add_argument("--layers", type=int, default=None, help="override the number of blocks")
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--attention", default="auto")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--check-layers", type=int, default=2,
                 help="blocks in the slice compared against the chunked attention path")
  args = p.parse_args()

  arch = {} if args.layers is None else {"num_layers": args.layers}
  cfg = PRESETS[args.preset](param_dtype=args.dtype, compute_dtype=args.dtype,
                             attention=args.attention, **arch)
  # the latent geometry of the variant built on this preset (the A14B's for a bare preset)
  geometry = next((v.geometry for v in VARIANTS.values() if v.transformer is PRESETS[args.preset]),
                  WAN21)
  grid = geometry.grid(args.frames, args.height, args.width)
  tokens = geometry.tokens(args.frames, args.height, args.width)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), commit {commit()}")
  print(f"{args.preset}: {cfg.num_layers} layers, dim {cfg.dim}; latents {grid} -> "
        f"{tokens} tokens; attention {args.attention}; {args.dtype}")

  keys = jax.random.split(jax.random.key(0), 2)
  latents = jax.random.normal(keys[0], (1, *grid, cfg.in_channels), jnp.float32)
  context = jax.random.normal(keys[1], (1, cfg.text_len, cfg.text_dim), jnp.float32)
  timestep = jnp.array([930.0])

  start = time.perf_counter()
  model = nnx.jit(lambda: wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))()
  jax.block_until_ready(nnx.state(model))
  init_s = time.perf_counter() - start
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
  compile_s, times, out = timed(forward, state, latents, timestep, context, steps=args.steps)
  report = {"preset": args.preset, "layers": cfg.num_layers, "tokens": tokens,
            "attention": args.attention, "dtype": args.dtype, "init_s": init_s,
            "compile_s": compile_s, "median_s": statistics.median(times),
            "peak_gib": peak_memory_gib(), "finite": bool(jnp.isfinite(out).all()),
            "commit": commit(), "device": jax.devices()[0].device_kind}

  # The slice: the first --check-layers blocks, run with this attention and with "chunked".
  n = min(args.check_layers, cfg.num_layers)
  outs = {}
  for impl in (args.attention, "chunked"):
    gd, st = slice_of(model, cfg.replace(num_layers=n, attention=impl))
    fn = jax.jit(lambda s, x, t, c, gd=gd: nnx.merge(gd, s)(x, t, c))
    outs[impl] = np.asarray(fn(st, latents, timestep, context), np.float32)
  a, b = outs[args.attention], outs["chunked"]
  report["slice_layers"] = n
  report["slice_rel_err_vs_chunked"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))

  print(f"init {init_s:.1f} s, compile {compile_s:.1f} s, median forward "
        f"{report['median_s']:.3f} s over {args.steps}, peak memory {report['peak_gib']} GiB, "
        f"finite {report['finite']}")
  print(f"{n}-block slice: {args.attention} vs chunked relative error "
        f"{report['slice_rel_err_vs_chunked']:.2e}")
  print(json.dumps(report))


if __name__ == "__main__":
  main()

"""Ahead-of-time memory estimate of one expert (the 14B's, or with --arch the TI2V-5B's, with a
timestep per latent frame as its image-to-video rows take it), compiled for this machine's
backend without allocating it: XLA's own figures for arguments, outputs and temporaries of one
forward pass, and of a gradient pass with the chosen remat policy.

  python benchmarks/aot_memory.py --frames 81 --height 480 --width 832 --attention chunked
  python benchmarks/aot_memory.py --arch wan22_ti2v_5b --frames 121 --height 704 --width 1280

On the CPU this checks that a 32,760-token forward (and backward) keeps its temporaries bounded
with the chunked attention; on a GPU it is the same estimate for cuDNN. Nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

import wan_jax
from wan_jax.variants import get_variant


def analyse(fn, *args) -> dict:
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  gib = lambda n: n / 2**30
  return {"compile_s": time.perf_counter() - start,
          "argument_gib": gib(mem.argument_size_in_bytes), "output_gib": gib(mem.output_size_in_bytes),
          "temp_gib": gib(mem.temp_size_in_bytes)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="wan22_t2v_a14b", choices=("wan22_t2v_a14b", "wan22_ti2v_5b"))
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--attention", default="chunked")
  p.add_argument("--remat", default="full")
  p.add_argument("--layers", type=int, default=None, help="default: the model's own")
  args = p.parse_args()

  variant = get_variant(args.arch)
  layers = {} if args.layers is None else {"num_layers": args.layers}
  cfg = variant.transformer(attention=args.attention, remat=args.remat, **layers)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))))
  geometry = variant.geometry
  grid = geometry.grid(args.frames, args.height, args.width)
  tokens = geometry.tokens(args.frames, args.height, args.width)
  x = jax.ShapeDtypeStruct((1, *grid, geometry.channels), jnp.float32)
  per_frame = variant.task == "ti2v"  # its image rows: t = 0 on the first latent frame
  t = jax.ShapeDtypeStruct((1, grid[0]) if per_frame else (1,), jnp.float32)
  c = jax.ShapeDtypeStruct((1, 512, 4096), jnp.float32)

  def forward(s, x, t, c):
    return nnx.merge(graphdef, s)(x, t, c)

  def grad_wrt_input(s, x, t, c):  # like a LoRA step: activations' gradients, no weight grads
    return jax.grad(lambda x: jnp.mean(forward(s, x, t, c) ** 2))(x)

  print(f"backend {jax.default_backend()}; {cfg.num_layers} layers; latents {grid} = {tokens} "
        f"tokens; attention {args.attention}; remat {args.remat}")
  rows = {}
  for name, fn in (("forward", forward), ("backward", grad_wrt_input)):
    rows[name] = analyse(fn, state, x, t, c)
    r = rows[name]
    print(f"{name:>8}: arguments {r['argument_gib']:.1f} GiB, temporaries {r['temp_gib']:.2f} GiB, "
          f"compiled in {r['compile_s']:.0f} s")
  print(json.dumps({"arch": args.arch, "frames": args.frames, "height": args.height,
                    "width": args.width, "remat": args.remat, "attention": args.attention,
                    "tokens": tokens, **rows}))


if __name__ == "__main__":
  main()

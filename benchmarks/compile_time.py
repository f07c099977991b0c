"""Compile time of the forward and backward pass against depth: the blocks are one lax.scan, so
compiling 40 layers should cost about what 2 layers cost.

  python benchmarks/compile_time.py --layers 2 8 40
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

import wan_jax


def compile_seconds(num_layers: int, remat: str) -> tuple[float, float]:
  cfg = wan_jax.tiny(num_layers=num_layers, dim=128, ffn_dim=256, remat=remat)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))))
  latents = jax.ShapeDtypeStruct((1, 5, 16, 24, cfg.in_channels), jnp.float32)
  timestep = jax.ShapeDtypeStruct((1,), jnp.float32)
  context = jax.ShapeDtypeStruct((1, 7, cfg.text_dim), jnp.float32)

  def forward(s, x, t, c):
    return nnx.merge(graphdef, s)(x, t, c)

  def loss_grad(s, x, t, c):
    return jax.grad(lambda s: jnp.mean(forward(s, x, t, c) ** 2))(s)

  times = []
  for fn in (forward, loss_grad):
    start = time.perf_counter()
    jax.jit(fn).lower(state, latents, timestep, context).compile()
    times.append(time.perf_counter() - start)
  return times[0], times[1]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", type=int, nargs="+", default=[2, 8, 40])
  p.add_argument("--remat", default="full")
  args = p.parse_args()
  rows = []
  print(f"{'layers':>6} {'forward s':>10} {'backward s':>11}   (backend {jax.default_backend()})")
  for n in args.layers:
    fwd, bwd = compile_seconds(n, args.remat)
    rows.append({"layers": n, "forward_compile_s": fwd, "grad_compile_s": bwd})
    print(f"{n:>6} {fwd:>10.2f} {bwd:>11.2f}")
  print(json.dumps(rows))


if __name__ == "__main__":
  main()

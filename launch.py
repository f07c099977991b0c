"""wan-jax entry point (placeholder until training lands: see the issue on the train step).

Today it checks the installation end to end: builds the tiny Wan transformer and both experts
behind the timestep switch, runs one forward pass of each on the CPU, and prints the result.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

import wan_jax


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="tiny", help="model preset (tiny | t2v_a14b)")
  args = parser.parse_args(argv)
  if args.config != "tiny":
    print("only the tiny demo runs until training lands", file=sys.stderr)
    return 2
  cfg = wan_jax.tiny()
  model = wan_jax.DualWanTransformer(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)),
                                     wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(1)))
  latents = jax.random.normal(jax.random.key(0), (1, 5, 12, 20, cfg.in_channels))
  context = jax.random.normal(jax.random.key(1), (1, 7, cfg.text_dim))
  forward = nnx.jit(lambda m, x, t, c: m(x, t, c))
  for t in (950.0, 300.0):
    start = time.time()
    v = forward(model, latents, jnp.array([t]), context)
    expert = "high-noise" if t >= model.threshold else "low-noise"
    print(f"t={t:6.1f} -> {expert} expert: velocity {tuple(v.shape)}, "
          f"mean |v| {float(jnp.abs(v).mean()):.4f}, {time.time() - start:.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

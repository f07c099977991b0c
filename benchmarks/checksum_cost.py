"""What verifying a checkpoint costs: `checksums()` (train/checksums.py) over one A14B expert's
training state at real size, timed on the device. Prints one line per state and a JSON report.

  python benchmarks/checksum_cost.py                 # GPU: LoRA rank 32 state and full fine-tune
  python benchmarks/checksum_cost.py --reduced       # CPU: the tiny config, to check it runs

Prediction: the two sums read each array once (the weighted one fuses with the plain one), so
the time is about bytes / memory bandwidth: ~12 ms for 14B bf16 weights (28 GB) on an H200.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

import wan_jax
from wan_jax.train.run.checksums import checksums
from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.train.run.random_weights import random_module


def timed(tree, repeats: int) -> float:
  checksums(tree)  # compile
  best = float("inf")
  for _ in range(repeats):
    tic = time.perf_counter()
    checksums(tree)
    best = min(best, time.perf_counter() - tic)
  return best


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reduced", action="store_true", help="the tiny config (CPU)")
  p.add_argument("--rank", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="")
  args = p.parse_args()
  cfg = wan_jax.tiny() if args.reduced else wan_jax.t2v_a14b(param_dtype="bfloat16")

  def build() -> wan_jax.WanTransformer:
    return wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))

  model = random_module(build, seed=0)
  add_lora(model, args.rank, float(args.rank))
  _, lora, frozen = nnx.split(model, LORA, FROZEN)
  lora_state = {"trainable": lora, "mu": lora, "nu": lora}  # Adam: two moments like the weights
  report = {"device": str(jax.devices()[0].device_kind), "config": "tiny" if args.reduced else
            "t2v_a14b"}
  for name, tree in (("lora_state", lora_state), ("base_weights_bf16", frozen)):
    nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
    seconds = timed(tree, args.repeats)
    report[name] = {"bytes": nbytes, "seconds": seconds, "gb_per_s": nbytes / seconds / 1e9}
    print(f"{name}: {nbytes / 2**30:.2f} GiB in {seconds * 1e3:.2f} ms "
          f"({nbytes / seconds / 1e9:.0f} GB/s)", flush=True)
  del frozen, model
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()

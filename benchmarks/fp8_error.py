"""What an fp8 base costs in accuracy, per scale granularity, on real-size kernels (CPU, numpy).

For each kernel shape of a 14B block (5120x5120: q, k, v, o; 5120x13824: ffn_in; 13824x5120:
ffn_out) and two weight distributions (Gaussian, and Student-t with 4 degrees of freedom: the
heavy tails that trained weights show), the relative RMS error of the dequantised kernel and of
y = x W for 256 random rows x, with one scale per tensor, per output column, or per 128 / 64 / 32
inputs of each column (float8_e4m3fn, largest magnitude of each group mapped to 448). Random
weights: real checkpoints may differ; the figures choose the granularity, they do not predict a
model's quality.

  python benchmarks/fp8_error.py [--shapes 5120x5120 5120x13824 13824x5120] [--out f.json]
  python benchmarks/fp8_error.py --expert [--frames 81 --height 480 --width 832]   # a GPU

--expert: one whole expert instead (random real-size bf16 weights drawn on the device, the same
expert quantised to fp8 by the loader's path, weights/load.quantize_model), its output on one
random input against the bf16 one; --reduced does it with the tiny fp32 config on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wan_jax.model.quantize import quantize_numpy  # noqa: E402

GRANULARITIES = {"tensor": None, "column": "col", "128 inputs": 128, "64 inputs": 64,
                 "32 inputs": 32}


def fake_quant(w: np.ndarray, how) -> np.ndarray:
  """w after an fp8 round trip at one granularity (fp32)."""
  fan_in = w.shape[0]
  if how is None:  # one scale for the whole tensor: a [1, in*out] column
    q, s = quantize_numpy(w.reshape(-1, 1), w.size)
    return (q.astype(np.float32) * s).reshape(w.shape)
  group = fan_in if how == "col" else how
  q, s = quantize_numpy(w, group)
  g = fan_in // group
  return (q.astype(np.float32).reshape(g, group, -1) * s[:, None, :]).reshape(w.shape)


def rel(err: np.ndarray, ref: np.ndarray) -> float:
  return float(np.sqrt(np.mean(err.astype(np.float64) ** 2) / np.mean(ref.astype(np.float64) ** 2)))


def expert_error(args) -> dict:
  """The output of one expert with an fp8 base against the same expert in bf16 (or fp32)."""
  import time

  import jax
  import jax.numpy as jnp

  import wan_jax
  from flops import latent_grid
  from wan_jax.train.run.random_weights import random_module
  from wan_jax.weights.load import quantize_model

  cfg = (wan_jax.tiny(remat="full") if args.reduced else
         wan_jax.t2v_a14b(param_dtype="bfloat16", compute_dtype="bfloat16", remat="full"))
  start = time.perf_counter()
  base = random_module(lambda: wan_jax.WanTransformer(cfg, rngs=__import__("flax").nnx.Rngs(0)),
                       args.seed)
  fp8 = quantize_model(base, cfg.replace(quantize="fp8"))
  built = time.perf_counter() - start
  grid = latent_grid(args.frames, args.height, args.width)
  keys = jax.random.split(jax.random.key(args.seed + 1), 2)
  latents = jax.random.normal(keys[0], (1, *grid, cfg.in_channels), jnp.float32)
  context = jax.random.normal(keys[1], (1, cfg.text_len, cfg.text_dim), jnp.float32)
  t = jnp.asarray([args.timestep])
  out = {}
  for name, model in (("base", base), ("fp8", fp8)):
    out[name] = np.asarray(jax.jit(lambda m, *x: m(*x))(model, latents, t, context), np.float64)
    del model
  report = {"benchmark": "fp8_expert_error", "device": str(jax.devices()[0].device_kind),
            "config": "tiny fp32" if args.reduced else "t2v_a14b bf16, random weights",
            "grid": list(grid), "timestep": args.timestep, "build_s": built,
            "output_rel_rms": rel(out["fp8"] - out["base"], out["base"]),
            "output_max_abs_over_rms": float(np.abs(out["fp8"] - out["base"]).max()
                                             / np.sqrt(np.mean(out["base"] ** 2)))}
  print(json.dumps(report), flush=True)
  return report


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", nargs="+", default=["5120x5120", "5120x13824", "13824x5120"])
  p.add_argument("--rows", type=int, default=256)
  p.add_argument("--expert", action="store_true", help="one whole expert's output instead")
  p.add_argument("--reduced", action="store_true", help="with --expert: the tiny config")
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--timestep", type=float, default=700.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  if args.expert:
    report = expert_error(args)
    if args.out:
      Path(args.out).write_text(json.dumps(report, indent=2))
    return report
  rng = np.random.default_rng(0)
  report = {"benchmark": "fp8_error", "rows": args.rows, "cases": []}
  for shape in args.shapes:
    fan_in, fan_out = map(int, shape.split("x"))
    x = rng.standard_normal((args.rows, fan_in)).astype(np.float32)
    for dist in ("gaussian", "student_t4"):
      w = (rng.standard_normal((fan_in, fan_out)) if dist == "gaussian"
           else rng.standard_t(4, (fan_in, fan_out))).astype(np.float32) / np.sqrt(fan_in)
      y = x @ w
      for name, how in GRANULARITIES.items():
        wq = fake_quant(w, how)
        case = {"shape": shape, "weights": dist, "granularity": name,
                "weight_rel_rms": rel(wq - w, w), "output_rel_rms": rel(x @ wq - y, y)}
        report["cases"].append(case)
        print(f"{shape:>11} {dist:>10} {name:>10}: weights {case['weight_rel_rms']:.4f}, "
              f"outputs {case['output_rel_rms']:.4f}", flush=True)
      del w, y
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2))
  return report


if __name__ == "__main__":
  main()

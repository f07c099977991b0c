"""Peak memory of converting a checkpoint of full-width (14B-sized) Wan layers.

Writes an expert folder of fp32 safetensors shards with the real 14B layer shapes (dim 5120,
ffn 13824, text 4096) but only --layers blocks, then runs `convert/wan22.py` on it in a child
process and prints the child's peak resident memory next to the checkpoint size. Peak memory should
stay near one block (~1.4 GB fp32) whatever the number of layers: that is what lets a 57 GB expert
convert on a 24 GiB machine.

  python benchmarks/convert_memory.py --layers 4 --dtype bfloat16 --workdir /tmp/convert-bench

With --load it then times `wan_jax.load_transformer` on the result in a fresh child process
(peak RSS includes the model itself: on the CPU backend the parameters live in host memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
DIM, FFN, TEXT, FREQ, HEADS = 5120, 13824, 4096, 256, 40


def linear(rng, out_f: int, in_f: int, prefix: str) -> dict[str, np.ndarray]:
  return {f"{prefix}.weight": rng.standard_normal((out_f, in_f), np.float32) * 0.02,
          f"{prefix}.bias": np.zeros((out_f,), np.float32)}


def top_level(rng) -> dict[str, np.ndarray]:
  t = {"patch_embedding.weight": rng.standard_normal((DIM, 16, 1, 2, 2), np.float32),
       "patch_embedding.bias": np.zeros((DIM,), np.float32),
       "head.modulation": rng.standard_normal((1, 2, DIM), np.float32)}
  t |= linear(rng, DIM, TEXT, "text_embedding.0") | linear(rng, DIM, DIM, "text_embedding.2")
  t |= linear(rng, DIM, FREQ, "time_embedding.0") | linear(rng, DIM, DIM, "time_embedding.2")
  t |= linear(rng, 6 * DIM, DIM, "time_projection.1") | linear(rng, 64, DIM, "head.head")
  return t


def block(rng, i: int) -> dict[str, np.ndarray]:
  b = f"blocks.{i}"
  t = {f"{b}.modulation": rng.standard_normal((1, 6, DIM), np.float32),
       f"{b}.norm3.weight": np.ones((DIM,), np.float32),
       f"{b}.norm3.bias": np.zeros((DIM,), np.float32)}
  for a in ("self_attn", "cross_attn"):
    for p in "qkvo":
      t |= linear(rng, DIM, DIM, f"{b}.{a}.{p}")
    t |= {f"{b}.{a}.norm_q.weight": np.ones((DIM,), np.float32),
          f"{b}.{a}.norm_k.weight": np.ones((DIM,), np.float32)}
  return t | linear(rng, FFN, DIM, f"{b}.ffn.0") | linear(rng, DIM, FFN, f"{b}.ffn.2")


def write_checkpoint(folder: Path, layers: int) -> int:
  """One shard per block (plus one for the rest), an index and an official config.json."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  weight_map, total = {}, 0
  parts = [("rest", lambda: top_level(rng))] + [(f"b{i}", lambda i=i: block(rng, i))
                                                for i in range(layers)]
  for n, (_, make) in enumerate(parts):
    name = f"diffusion_pytorch_model-{n + 1:05d}-of-{len(parts):05d}.safetensors"
    tensors = make()
    save_file(tensors, str(folder / name))
    total += sum(a.nbytes for a in tensors.values())
    weight_map.update({k: name for k in tensors})
    del tensors
  (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"weight_map": weight_map}))
  (folder / "config.json").write_text(json.dumps({"dim": DIM, "num_heads": HEADS,
                                                  "num_layers": layers, "text_len": 512}))
  return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--workdir", type=Path, default=Path("/tmp/wan-jax-convert-bench"))
  parser.add_argument("--load", action="store_true", help="also time load_transformer")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  src, out = args.workdir / "expert", args.workdir / "out"

  start = time.time()
  size = write_checkpoint(src, args.layers)
  print(f"wrote {args.layers} full-width blocks, {size / 2**30:.2f} GiB fp32, "
        f"in {time.time() - start:.0f} s")

  start = time.time()
  cmd = [sys.executable, str(REPO / "convert" / "wan22.py"), str(src), str(out),
         "--dtype", args.dtype]
  result = subprocess.run(cmd, capture_output=True, text=True)
  seconds = time.time() - start
  if result.returncode:
    sys.exit(f"conversion failed:\n{result.stderr}")
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
  block_bytes = sum(a.nbytes for a in block(np.random.default_rng(0), 0).values())
  report = {"layers": args.layers, "dtype": args.dtype, "checkpoint_gib": size / 2**30,
            "one_block_fp32_gib": block_bytes / 2**30, "peak_rss_gib": peak / 2**30,
            "seconds": seconds, "gib_per_s": size / 2**30 / seconds}
  print(f"converted to {args.dtype} in {seconds:.0f} s ({report['gib_per_s']:.2f} GiB/s read)")
  print(f"peak RSS of the converter: {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB "
        f"checkpoint (one fp32 block is {block_bytes / 2**30:.2f} GiB)")
  if args.load:
    report |= time_load(out, args.dtype)
    print(f"load_transformer: {report['load_s']:.0f} s, child peak RSS "
          f"{report['load_peak_rss_gib']:.2f} GiB (model {report['model_gib']:.2f} GiB)")
  print(json.dumps(report))
  shutil.rmtree(args.workdir, ignore_errors=True)


LOAD_SCRIPT = """
import json, resource, sys, time
import jax
import wan_jax
start = time.time()
model = wan_jax.load_transformer(sys.argv[1], dtype=sys.argv[2])
jax.block_until_ready(jax.tree.leaves(model))
nbytes = sum(x.nbytes for x in jax.tree.leaves(model) if hasattr(x, "nbytes"))
print(json.dumps({"load_s": time.time() - start, "model_gib": nbytes / 2**30,
                  "load_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def time_load(out: Path, dtype: str) -> dict:
  result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(out), dtype],
                          capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"loading failed:\n{result.stderr}")
  return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()

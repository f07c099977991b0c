"""Peak host memory of loading full-width (14B-sized) Wan layers with an fp8 base, and the disk
size of the fp8 conversion.

Writes an expert of fp32 safetensors shards with the real 14B layer shapes (dim 5120, ffn 13824,
text 4096) but only --layers blocks (benchmarks/convert_memory.py), converts it to bfloat16 and to
fp8 (`convert/wan22.py --dtype fp8`), then loads it in fresh child processes and prints each
child's peak resident memory next to the size of the model it built (on the CPU backend the
parameters live in host memory, so the peak includes the model itself):
- the bfloat16 folder with model.quantize=none (the bf16 model);
- the bfloat16 folder with model.quantize=fp8 (quantised block by block as read);
- the fp8 folder with model.quantize=fp8 (read as stored);
- the PyTorch shards with model.quantize=fp8 (converted and quantised on the fly);
- the old way for comparison: the whole bf16 model loaded, then `quantize_model`.

  python benchmarks/fp8_load_memory.py --layers 6 --workdir /tmp/fp8-load-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from convert_memory import write_checkpoint  # noqa: E402

# Peak RSS from /proc/self/status (VmHWM): ru_maxrss survives exec on Linux, so a child
# would report the parent's peak when that was larger.
PEAK = """
def peak_gib():
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 2**20
"""
LOAD = PEAK + """
import json, sys, time
import jax
import wan_jax
from wan_jax.weights.load import quantize_model
path, quantize = sys.argv[1], sys.argv[2]
base = peak_gib()
start = time.time()
if quantize == "after":  # the whole bf16 model first, then quantised (the path before block loads)
  model = wan_jax.load_transformer(path, dtype="bfloat16")
  model = quantize_model(model, model.config.replace(quantize="fp8"))
elif quantize != "nothing":
  model = wan_jax.load_transformer(path, dtype="bfloat16", quantize=quantize)
leaves = [] if quantize == "nothing" else jax.tree.leaves(model)
jax.block_until_ready(leaves)
print(json.dumps({"load_s": time.time() - start, "import_rss_gib": base,
                  "model_gib": sum(x.nbytes for x in leaves) / 2**30,
                  "peak_rss_gib": peak_gib()}))
"""


CONVERT = PEAK + """
import json, sys, time
from wan_jax.weights.convert import convert_checkpoint
start = time.time()
convert_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], log=lambda line: None)
print(json.dumps({"seconds": time.time() - start,
                  "peak_rss_gib": peak_gib()}))
"""


def child(script: str, *args: str) -> dict:
  """A fresh process (its own peak RSS) running `script`; its last line of JSON."""
  result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
  if result.returncode:
    sys.exit(f"{args} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def convert(src: Path, out: Path, dtype: str) -> dict:
  report = child(CONVERT, str(src), str(out), dtype)
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  return report | {"disk_gib": size / 2**30}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--workdir", type=Path, default=Path("/tmp/wan-jax-fp8-load-bench"))
  parser.add_argument("--json", type=Path, default=None, help="also write the report here")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  src = args.workdir / "expert"
  report: dict = {"layers": args.layers, "source_fp32_gib": write_checkpoint(src, args.layers)
                  / 2**30}
  for dtype in ("bfloat16", "fp8"):
    report[f"convert_{dtype}"] = convert(src, args.workdir / dtype, dtype)
    print(dtype, report[f"convert_{dtype}"], flush=True)
  report["disk_fp8_over_bf16"] = (report["convert_fp8"]["disk_gib"]
                                  / report["convert_bfloat16"]["disk_gib"])
  cases = {"python_and_jax_only": (src, "nothing"),
           "bf16_folder_quantize_none": (args.workdir / "bfloat16", "none"),
           "bf16_folder_quantize_fp8": (args.workdir / "bfloat16", "fp8"),
           "fp8_folder_quantize_fp8": (args.workdir / "fp8", "fp8"),
           "pytorch_shards_quantize_fp8": (src, "fp8"),
           "bf16_folder_whole_then_quantize_model": (args.workdir / "bfloat16", "after")}
  for name, (path, quantize) in cases.items():
    report[name] = child(LOAD, str(path), quantize)
    print(name, report[name], flush=True)
  print(json.dumps(report, indent=1))
  if args.json:
    args.json.write_text(json.dumps(report, indent=1) + "\n")
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()

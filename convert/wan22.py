"""Convert Wan 2.2 PyTorch checkpoints to wan-jax (Orbax) checkpoints.

  python convert/wan22.py SRC OUT [--dtype bfloat16|float32|float16]

SRC is detected, not declared: an official release folder (high_noise_model/, low_noise_model/),
a diffusers release folder (transformer/ = high-noise, transformer_2/ = low-noise), one expert
folder of safetensors shards, or one .safetensors file (original, diffusers or ComfyUI keys).
OUT receives one Orbax checkpoint per expert and manifest.json; load it with
`wan_jax.load_transformer(OUT, expert=...)` or `wan_jax.load_dual_transformer(OUT)`.
Memory stays near one or two transformer blocks (~1.4 GB each for the 14B in fp32), not the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
  import wan_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_jax.weights.convert import PARAM_DTYPES, convert_transformers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 2)[2])
  parser.add_argument("src", type=Path, help="checkpoint folder or .safetensors file")
  parser.add_argument("out", type=Path, help="output folder")
  parser.add_argument("--dtype", default="bfloat16", choices=PARAM_DTYPES,
                      help="parameter dtype of the converted weights (default: bfloat16)")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads, when no config.json says (default: dim / 128)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing conversion")
  args = parser.parse_args(argv)
  try:
    convert_transformers(args.src, args.out, args.dtype, num_heads=args.num_heads,
                         overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # CheckpointError, bad JSON, permissions, missing files
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

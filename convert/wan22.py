"""Convert Wan 2.2 PyTorch checkpoints to wan-jax (Orbax) checkpoints.

  python convert/wan22.py SRC OUT [--dtype bfloat16|float32|float16|fp8] [--only vae,text_encoder]

SRC is detected, not declared: an official release folder (high_noise_model/, low_noise_model/,
Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/), a diffusers release folder
(transformer/ = high-noise, transformer_2/ = low-noise, vae/, text_encoder/, tokenizer/), or one
component on its own: an expert, VAE or text-encoder file (.safetensors or .pth; .pth files are
read without running pickle code) or folder, or a tokenizer folder.
Wan2.2-T2V-A14B, Wan2.2-I2V-A14B and Wan2.2-TI2V-5B convert alike: the task (text-, image- or
text-and-image-to-video) is read off the experts' patch embedding (16, 36 or 48 input channels),
checked against their config.json, printed and recorded in manifest.json; experts of different
tasks are refused. The TI2V-5B (shards at the release folder's root, Wan2.2_VAE.pth beside them)
converts into one expert, `transformer`, and the Wan 2.2 VAE.
OUT receives one Orbax checkpoint per component, the tokenizer, and manifest.json. More components
can be converted into the same OUT later. Load with wan_jax.load_dual_transformer(OUT),
load_vae(OUT), load_text_encoder(OUT), load_tokenizer(OUT).
Memory stays near one transformer block (~1.4 GB for the 14B in fp32) or one umT5 layer.
--dtype fp8 writes the experts as `model.quantize=fp8` holds them (block kernels float8_e4m3fn
with one fp32 scale per 64 inputs, the rest bfloat16; a ComfyUI fp8 file's own fp8 values kept
where its scales allow): about half the disk of bfloat16, loadable only with model.quantize=fp8.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
  import wan_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_jax.weights.convert import (COMPONENTS, EXPERT_DTYPES, PARAM_DTYPES,  # noqa: E402
                                     convert_checkpoint)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 2)[2])
  parser.add_argument("src", type=Path, help="release folder, component folder or file")
  parser.add_argument("out", type=Path, help="output folder")
  parser.add_argument("--dtype", default="bfloat16", choices=EXPERT_DTYPES,
                      help="the transformers' parameter dtype, or fp8: quantised block kernels "
                           "for model.quantize=fp8 (default: bfloat16)")
  # No argparse choices: "fp8" here gets our one-line refusal rather than a usage dump.
  parser.add_argument("--vae-dtype", default="float32", metavar="|".join(PARAM_DTYPES),
                      help="the VAE's parameter dtype (default: float32, as released)")
  parser.add_argument("--text-encoder-dtype", default="bfloat16", metavar="|".join(PARAM_DTYPES),
                      help="umT5's parameter dtype (default: bfloat16, as released)")
  parser.add_argument("--only", default=None,
                      help=f"comma-separated components to convert: {', '.join(COMPONENTS)} "
                           "(default: all found)")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads, when no config.json says (default: dim / 128)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace components OUT already holds")
  args = parser.parse_args(argv)
  only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
  try:
    convert_checkpoint(args.src, args.out, args.dtype, vae_dtype=args.vae_dtype,
                       text_encoder_dtype=args.text_encoder_dtype, only=only,
                       num_heads=args.num_heads, overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # CheckpointError, bad JSON, permissions, missing files
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

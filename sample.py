"""Render prompts with a trained LoRA: both Wan 2.2 A14B experts, each with its LoRA file (or the
TI2V-5B's one model with its file), through the preview sampler (Euler, classifier-free guidance
per expert), to MP4s.

  python sample.py --run runs/demo --prompt "a red ball rolling to the right"
  python sample.py --run runs/demo_i2v --prompt "a red ball" --image start.png
  python sample.py --run runs/demo_i2v --prompt "a red ball" --image start.png --last-image end.png
  python sample.py --model /ckpt/wan22-jax --lora-high person_high_noise.safetensors \\
      --lora-low person_low_noise.safetensors --prompt "a person waving" --out samples/
  python sample.py --run runs/demo_5b --prompt "a red ball" [--image start.png]   # TI2V-5B

--run takes the model, the task (T2V, I2V or TI2V), the run's final LoRA files
(lora/<save.name>_{high,low}_noise.safetensors, or <save.name>.safetensors for the 5B) and its
preview settings (size, frames, steps, shift, guidance, seed) from the run's config.json; without
--prompt it re-renders the run's preview prompts (and images, and last images). --model is a
folder made by convert/wan22.py (or `tiny` / `tiny_i2v` / `tiny_ti2v`, the demos' random
models); without --run, sizes and steps are the config file's defaults. The same arguments give
the same pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ml_collections

# transformers announces "PyTorch was not found" on import; only its tokenizer classes are used.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

CONFIGS = Path(__file__).resolve().parent / "configs"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="sample.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_argument_group("model and LoRA")
  src.add_argument("--run", type=Path, help="a training run's folder (its config.json, lora/)")
  src.add_argument("--model", help="a converted checkpoint folder (convert/wan22.py), or tiny | "
                   "tiny_i2v | tiny_ti2v; with --run, replaces the run's model.name_or_path")
  src.add_argument("--lora", type=Path, action="append", default=[], metavar="FILE",
                   help="a LoRA file, repeatable: the expert it goes on is read from its wan-jax "
                   "metadata or its name (high_noise / low_noise); replaces the run's files")
  src.add_argument("--lora-high", type=Path, metavar="FILE",
                   help="the high-noise expert's LoRA file (any name)")
  src.add_argument("--lora-low", type=Path, metavar="FILE",
                   help="the low-noise expert's LoRA file (any name)")
  src.add_argument("--no-lora", action="store_true", help="the experts as released, no LoRA")
  what = p.add_argument_group("what to render")
  what.add_argument("--prompt", action="append", default=[], help="repeatable: one file each")
  what.add_argument("--negative-prompt", help="default: the run's preview.negative_prompt")
  what.add_argument("--image", action="append", default=[], metavar="FILE",
                    help="image-to-video: the start image, one for all prompts or one each")
  what.add_argument("--last-image", action="append", default=[], metavar="FILE",
                    help="image-to-video: the image the clip ends on (first-last frame), one "
                    "for all prompts or one each; needs --image")
  what.add_argument("--out", type=Path, help="output folder (default: <run>/samples, else "
                    "samples)")
  how = p.add_argument_group("sampler (default: the run's preview settings)")
  how.add_argument("--seed", type=int)
  how.add_argument("--steps", type=int, help="Euler steps")
  how.add_argument("--height", type=int)
  how.add_argument("--width", type=int)
  how.add_argument("--frames", type=int, help="4k+1 frames (1 writes a PNG)")
  how.add_argument("--shift", type=float, help="the schedule's shift")
  how.add_argument("--guidance", help="classifier-free guidance: one scale, or LOW,HIGH (low-noise "
                   "expert first, upstream's order)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def _config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The run's config, or the config file's defaults for --model."""
  if args.run is not None:
    path = args.run / "config.json"
    if not path.is_file():
      raise FileNotFoundError(f"--run {args.run}: no config.json there (not a training run)")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    if args.model in _tiny_archs():
      raise ValueError(f"--model {args.model} cannot replace a run's model")
    if args.model:
      cfg.model.name_or_path = args.model
    return cfg
  if args.model is None:
    raise ValueError("give --run (a training run's folder) or --model (a converted checkpoint)")
  from wan_jax.variants import VARIANTS, for_task
  if args.model in _tiny_archs():
    return _variant_config(VARIANTS[args.model].config_file)
  if not Path(args.model).is_dir():
    raise FileNotFoundError(f"--model {args.model} is not a folder")
  from wan_jax.weights.load import task_of
  cfg = _variant_config(for_task(task_of(args.model) or "t2v").config_file)
  cfg.model.name_or_path = args.model
  return cfg


def _tiny_archs() -> tuple[str, ...]:
  from wan_jax.variants import VARIANTS
  return tuple(a for a, v in VARIANTS.items() if v.tiny)


def _variant_config(config_file: str) -> ml_collections.ConfigDict:
  """A variant's config (`configs/<file>[:tiny]`, wan_jax/variants.py)."""
  from wan_jax.config_file import load_config_file
  return load_config_file(str(CONFIGS.parent / config_file))


def _loras(args: argparse.Namespace, cfg: ml_collections.ConfigDict) -> dict:
  from wan_jax.sampling.loras import assign
  from wan_jax.train.run.loading import variant
  experts = variant(cfg).experts
  given = args.lora or args.lora_high or args.lora_low
  if args.no_lora:
    if given:
      raise ValueError("--no-lora and a LoRA file: give one or the other")
    return {}
  if given or args.run is None:
    return assign(args.lora, args.lora_high, args.lora_low, experts)
  folder = args.run / "lora"
  files = {e: folder / f"{cfg.save.name}{variant(cfg).file_suffix(e)}.safetensors"
           for e in experts}
  found = {e: f for e, f in files.items() if f.is_file()}
  if not found:
    raise FileNotFoundError(f"--run {args.run}: no final LoRA file in {folder} (has the run "
                            "finished?); name files with --lora, or sample without: --no-lora")
  return found


def _guidance(text: str | None):
  if text is None:
    return None
  from wan_jax.train.outputs.preview import Guidance
  try:
    values = [float(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) not in (1, 2):
    raise ValueError(f"--guidance {text}: one number, or LOW,HIGH")
  return Guidance(values[0], values[-1])


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    cfg = _config(args)
    from wan_jax.sampling.sampler import Settings, sample
    from wan_jax.train.run import loading
    task = loading.task(cfg)
    loras = _loras(args, cfg)
    prompts, images, lasts = list(args.prompt), list(args.image), list(args.last_image)
    if not prompts:
      if args.run is None:
        raise ValueError("give at least one --prompt")
      prompts = list(cfg.preview.prompts)
      if task.takes_preview_images and not images:
        images = list(cfg.preview.get("images", []))
        lasts = lasts or list(cfg.preview.get("last_images", []))
    if (images or lasts) and not task.takes_preview_images:
      flag = "--image" if images else "--last-image"
      raise ValueError(f"{flag}: this is a {task.title} model; it takes no start image")
    if lasts and not task.first_last_arrays:
      raise ValueError(f"--last-image: this is a {task.title} model; it takes no last image")
    if task.needs_preview_images and not images:
      raise ValueError("this is an image-to-video model: give the start image with --image")
    if len(images) == 1:
      images = images * len(prompts)
    if len(lasts) == 1:
      lasts = lasts * len(prompts)
    guidance = _guidance(args.guidance)
    if guidance is not None and guidance.low_noise != guidance.high_noise and \
        loading.variant(cfg).single_expert:
      raise ValueError(f"--guidance {args.guidance}: this model has one expert for every step; "
                       "give one scale")
    settings = Settings.from_config(
        cfg, seed=args.seed, num_steps=args.steps, height=args.height, width=args.width,
        num_frames=args.frames, shift=args.shift, guidance=guidance,
        negative_prompt=args.negative_prompt)
    out = args.out or (args.run / "samples" if args.run is not None else Path("samples"))
    from wan_jax.sampling.loras import check_made_for
    names = loading.variant(cfg).experts
    for expert, name in names.items():  # what goes on each expert, before the minutes of loading
      if expert in loras:
        check_made_for(loras[expert], str(cfg.model.arch))
      label = "the model" if len(names) == 1 else f"{expert}-noise expert"
      print(f"{label}: {loras.get(expert, 'as released (no LoRA)')}", file=sys.stderr)
    paths = sample(cfg, loras, prompts, images, out, settings, last_images=lasts,
                   progress=not args.no_progress)
  except (ValueError, FileNotFoundError) as e:
    print(f"sample.py: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())

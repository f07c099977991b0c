"""Start-up checks of a run's numeric settings: one line naming the key, before anything loads.

A value out of range would otherwise train silently wrong (a negative learning rate ascends the
loss, steps=0 writes an untrained "final" LoRA) or fail minutes in (a preview of 3 frames).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import ml_collections

from wan_jax.data.config import resolutions
from wan_jax.data.media import IMAGE_EXTS, MediaError, is_image, probe
from wan_jax.model.config import ATTENTION_IMPLS
from wan_jax.model.lora import resolve_targets
from wan_jax.model.quantize import QUANTIZE
from wan_jax.model.remat import REMAT_PLANS
from wan_jax.tasks import Task
from wan_jax.train.outputs.wandb_log import check_available
from wan_jax.train.step.optimizer import SCHEDULES
from wan_jax.train.step.timesteps import METHODS
from wan_jax.variants import get_variant


def _number(cfg: ml_collections.ConfigDict, key: str) -> float:
  value: Any = cfg
  for part in key.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{key} must be a number, got {value!r}")
  return float(value)


def _check(cfg: ml_collections.ConfigDict, key: str, ok: Callable[[float], bool],
           want: str) -> None:
  value = _number(cfg, key)
  if not ok(value):
    raise ValueError(f"{key} must be {want}, got {value:g}")


def _frames_ok(n: float) -> bool:
  return n >= 1 and n == int(n) and (int(n) - 1) % 4 == 0


POSITIVE = (lambda v: math.isfinite(v) and v > 0, "finite and > 0")
NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")
AT_LEAST_ONE = (lambda v: v >= 1 and v == int(v), "a whole number >= 1")
COUNT = (lambda v: v >= 0 and v == int(v), "a whole number >= 0 (0 = off)")
PROBABILITY = (lambda v: 0 <= v <= 1, "in [0, 1]")
FRAMES = (_frames_ok, "1 or 4k+1 (5, 9, ..., 81): the VAE compresses 4 frames after the first")
# int(gib * 2**30) of 1e300 overflows; no device has a million GiB
GIB = (lambda v: 0 <= v <= 1e6, "a size in GiB from 0 (the device's own limit) to 1e6")
HOST_GIB = (lambda v: 0 <= v <= 1e6, "a size in GiB from 0 (the host's free memory) to 1e6")

RULES = {
    "train.steps": AT_LEAST_ONE, "train.batch_size": AT_LEAST_ONE,
    "train.grad_accum": AT_LEAST_ONE, "train.learning_rate": POSITIVE,
    "train.warmup_steps": COUNT, "train.weight_decay": NON_NEGATIVE,
    "train.max_grad_norm": NON_NEGATIVE, "train.switch_boundary_every": AT_LEAST_ONE,
    "train.shift": POSITIVE, "train.logit_std": POSITIVE, "train.log_every": AT_LEAST_ONE,
    "train.max_skipped_in_a_row": COUNT, "train.device_memory_gib": GIB,
    "train.host_memory_gib": HOST_GIB,
    "checkpoint.every": AT_LEAST_ONE, "checkpoint.keep": AT_LEAST_ONE,
    "save.every": COUNT, "preview.every": COUNT,
}
LORA_RULES = {"lora.rank": AT_LEAST_ONE, "lora.alpha": POSITIVE}
CHOICES = {"train.memory_plan": ("auto", "off"), "train.remat_policy": ("auto", *REMAT_PLANS),
           "train.timestep_sampling": METHODS, "train.lr_schedule": SCHEDULES,
           "model.attention": ATTENTION_IMPLS}
MODEL_PATHS = ("name_or_path", "vae_path", "text_encoder_path", "tokenizer_path")
# (preview sides: check_variant, a multiple of the model's token side)
PREVIEW_RULES = {"preview.num_frames": FRAMES, "preview.num_steps": AT_LEAST_ONE}
DATASET_RULES = {"loss_multiplier": POSITIVE, "flip_prob": PROBABILITY,
                 "caption_dropout_rate": PROBABILITY, "num_frames": FRAMES,
                 "repeats": AT_LEAST_ONE}


def auto_or_bool(cfg: ml_collections.ConfigDict, key: str) -> bool | None:
  """A key that is "auto" (None: the planner decides) or True/False (also written "true",
  "false" on the command line); anything else is one line naming the key."""
  value: Any = cfg
  for part in key.split("."):
    value = value[part]
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("auto", "true", "false"):
    return None if text == "auto" else text == "true"
  raise ValueError(f"{key} must be auto, True or False, got {value!r}")


def check_run_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key out of range (or W&B asked for, required and not
  installed)."""
  rules = dict(RULES)
  if _number(cfg, "preview.every") > 0:
    rules.update(PREVIEW_RULES)
  if cfg.lora.enabled:
    rules.update(LORA_RULES)
  for key, (ok, want) in rules.items():
    _check(cfg, key, ok, want)
  auto_or_bool(cfg, "train.stream_weights")
  quantize = cfg.model.get("quantize", "none")
  if quantize not in QUANTIZE:
    raise ValueError(f"model.quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
  if quantize != "none" and not cfg.lora.enabled:
    raise ValueError(f"model.quantize={quantize} stores the frozen base in {quantize}; a full "
                     "fine-tune (lora.enabled=False) trains those weights: use model.quantize="
                     "none")
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    if cfg[section][name] not in allowed:
      raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {cfg[section][name]!r}")
  if cfg.lora.enabled:
    try:
      resolve_targets(list(cfg.lora.targets))
    except ValueError as e:
      raise ValueError(f"lora.targets: {e}") from None
  margin = _number(cfg, "train.memory_margin")
  if not 0 <= margin < 1:
    raise ValueError(f"train.memory_margin must be in [0, 1), got {margin:g}")
  for i, ds in enumerate(cfg.datasets):
    try:
      resolutions(ds)
    except (ValueError, TypeError):
      raise ValueError(f"datasets[{i}].resolution must be one or more whole sizes >= 16 pixels "
                       f"(e.g. 480 or [480, 720]), got {ds.resolution!r}") from None
    for key, (ok, want) in DATASET_RULES.items():
      value = ds[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"datasets[{i}].{key} must be a number, got {value!r}")
      if not ok(float(value)):
        raise ValueError(f"datasets[{i}].{key} must be {want}, got {float(value):g}")
  check_available(cfg)  # W&B asked for and required, but not installed
  check_model_paths(cfg)
  check_variant(cfg)


def check_variant(cfg: ml_collections.ConfigDict) -> None:
  """What model.arch's variant fixes: its experts (a one-model release trains its one model,
  at boundary 0) and the side multiple of its latent geometry (previews)."""
  v = get_variant(cfg.model.arch)
  boundary = _number(cfg, "model.boundary")
  if v.single_expert:
    if boundary != 0.0:
      raise ValueError(f"model.boundary must be 0 for {v.title}: its one model takes every "
                       f"timestep; got {boundary:g}")
    if cfg.model.train_low_noise or not cfg.model.train_high_noise:
      raise ValueError(f"{v.title} has one model: set model.train_high_noise=True and "
                       f"model.train_low_noise=False (as {v.config_file} does)")
  elif not 0 < boundary < 1:
    raise ValueError(f"model.boundary must be in (0, 1): t >= boundary * 1000 is the high-noise "
                     f"expert's, got {boundary:g}")
  side = v.geometry.side_multiple
  if _number(cfg, "preview.every") > 0:
    for key in ("preview.height", "preview.width"):
      value = _number(cfg, key)
      if value < side or value % side:
        raise ValueError(f"{key} must be a multiple of {side} pixels for {v.title} (its VAE's "
                         f"{v.geometry.spatial}x times the patch), got {value:g}")
    low = _number(cfg, "preview.guidance_low_noise")
    high = _number(cfg, "preview.guidance_high_noise")
    if v.single_expert and low != high:
      raise ValueError(f"preview.guidance_low_noise ({low:g}) and preview.guidance_high_noise "
                       f"({high:g}) differ, but {v.title} has one model for every step: set "
                       "both to the scale you want")


def check_model_paths(cfg: ml_collections.ConfigDict) -> None:
  """Each model path given names something that exists (the tiny demo and random weights read
  none); what it holds is checked when it loads."""
  if get_variant(cfg.model.arch).tiny or cfg.model.random_weights:
    return
  for name in MODEL_PATHS:
    value = cfg.model[name]
    if value and not Path(value).expanduser().exists():
      raise ValueError(f"model.{name}: {value} does not exist (a folder made by convert/wan22.py, "
                       "or a Wan 2.2 release folder or file)")


def check_preview_images(cfg: ml_collections.ConfigDict, task: Task) -> None:
  """preview.images: one readable image per prompt for image-to-video, none for text-to-video;
  preview.last_images (first-last frame): empty, or one entry per prompt, a readable image or ""
  (none), each beside a start image. Checked before any weights load, so a typo never costs the
  first preview's wait."""
  images = list(cfg.preview.get("images", []) or [])
  lasts = list(cfg.preview.get("last_images", []) or [])
  refused = [("images", [x for x in images if x])] if not task.takes_preview_images else []
  if not task.first_last_arrays:
    refused.append(("last_images", [x for x in lasts if x]))
  for key, given in refused:
    if given:
      what = "image-to-video" if key == "images" else "first-last-frame (I2V-A14B)"
      raise ValueError(f"preview.{key} is for {what} models; model.arch="
                       f"{cfg.model.arch!r} is {task.title} (leave preview.{key} empty)")
  if not task.takes_preview_images:
    return
  if not int(cfg.preview.every) or not cfg.preview.prompts:
    return
  prompts = len(cfg.preview.prompts)
  if lasts and len(lasts) != prompts:
    raise ValueError(f"preview.last_images needs one entry per prompt (an image, or \"\" for "
                     f"none) or none at all: {prompts} prompts, {len(lasts)} last images")
  for i, last in enumerate(lasts):
    if last and not (i < len(images) and images[i]):
      raise ValueError(f"preview.last_images[{i}] ({last}) has no start image: a last image "
                       f"ends a clip that preview.images[{i}] starts")
  if any(lasts) and int(cfg.preview.num_frames) < 5:
    raise ValueError(f"preview.last_images needs preview.num_frames >= 5 (with "
                     f"{int(cfg.preview.num_frames)} frame the last image would be the first)")
  optional = not task.needs_preview_images  # "" or no list: that prompt is text-to-video
  if len(images) != prompts and not (optional and not images):
    what = "an image (or \"\" for none)" if optional else "one image"
    raise ValueError(f"preview.images needs {what} per prompt for {task.title}: "
                     f"{prompts} prompts, {len(images)} images")
  if not optional and not all(images):
    raise ValueError(f"preview.images needs an image for every prompt for {task.title}")
  named = [("images", x) for x in images if x] + [("last_images", x) for x in lasts if x]
  for key, image in named:
    path = Path(image).expanduser()
    if not is_image(path):
      raise ValueError(f"preview.{key}: {path} is not an image ({' '.join(IMAGE_EXTS)})")
    try:
      probe(path)
    except (MediaError, OSError) as e:
      raise ValueError(f"preview.{key}: {path} cannot be read ({e})") from None


def check_workdir(workdir: Path) -> None:
  """A workdir whose path holds `[` or `]` is refused: Orbax reads its checkpoint folders as
  glob patterns, so every checkpoint saved there would be unrestorable (`*`, `?` match themselves
  and work)."""
  if any(c in str(workdir) for c in "[]"):
    raise ValueError(f"the workdir {workdir} contains [ or ]: Orbax reads checkpoint paths as "
                     "glob patterns and could not restore them; choose another folder name")

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
from wan_jax.model.quantize import QUANTIZE
from wan_jax.tasks import Task
from wan_jax.train.wandb_log import check_available


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
SIDE = (lambda v: v >= 16 and v % 16 == 0, "a multiple of 16 pixels")

RULES = {
    "train.steps": AT_LEAST_ONE, "train.batch_size": AT_LEAST_ONE,
    "train.grad_accum": AT_LEAST_ONE, "train.learning_rate": POSITIVE,
    "train.warmup_steps": COUNT, "train.weight_decay": NON_NEGATIVE,
    "train.max_grad_norm": NON_NEGATIVE, "train.switch_boundary_every": AT_LEAST_ONE,
    "train.shift": POSITIVE, "train.logit_std": POSITIVE, "train.log_every": AT_LEAST_ONE,
    "train.max_skipped_in_a_row": COUNT, "train.device_memory_gib": NON_NEGATIVE,
    "train.host_memory_gib": NON_NEGATIVE,
    "checkpoint.every": AT_LEAST_ONE, "checkpoint.keep": AT_LEAST_ONE,
    "save.every": COUNT, "preview.every": COUNT,
}
PREVIEW_RULES = {"preview.num_frames": FRAMES, "preview.num_steps": AT_LEAST_ONE,
                 "preview.height": SIDE, "preview.width": SIDE}
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


def check_preview_images(cfg: ml_collections.ConfigDict, task: Task) -> None:
  """preview.images: one readable image per prompt for image-to-video, none for text-to-video;
  checked before any weights load, so a typo never costs the first preview's wait."""
  images = list(cfg.preview.get("images", []) or [])
  if not task.needs_preview_images:
    if images:
      raise ValueError(f"preview.images is for image-to-video models; model.arch="
                       f"{cfg.model.arch!r} is {task.title} (leave preview.images empty)")
    return
  if not int(cfg.preview.every) or not cfg.preview.prompts:
    return
  if len(images) != len(cfg.preview.prompts):
    raise ValueError(f"preview.images needs one image per prompt for {task.title}: "
                     f"{len(cfg.preview.prompts)} prompts, {len(images)} images")
  for image in images:
    path = Path(image).expanduser()
    if not is_image(path):
      raise ValueError(f"preview.images: {path} is not an image ({' '.join(IMAGE_EXTS)})")
    try:
      probe(path)
    except (MediaError, OSError) as e:
      raise ValueError(f"preview.images: {path} cannot be read ({e})") from None

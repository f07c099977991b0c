"""Per-dataset options (one ml-collections entry per dataset in `config.datasets`).

Keys follow the names users know from ai-toolkit where they exist. Override from the command line,
e.g. `--config.datasets[0].folder_path=/data/clips --config.datasets[0].num_frames=81`.
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from wan_jax.data.frames import SELECTIONS

MISSING_MASK_POLICIES = ("error", "unmasked", "skip")


def dataset_config(**overrides: Any) -> ml_collections.ConfigDict:
  # Not type-safe: `resolution` may be one number or a list of them.
  c = ml_collections.ConfigDict(type_safe=False)
  c.folder_path = ""  # images and/or clips; captions beside them
  c.mask_path = ""  # masks named like the media (stem.png, stem.mp4 or a folder stem/); "" = none
  c.caption_ext = "txt"
  c.default_caption = ""  # for items without a caption file
  c.caption_dropout_rate = 0.05  # share of steps that see the blank caption
  c.trigger_word = ""  # replaces [trigger] in captions and leads captions without it ("" = none)
  c.resolution = (512,)  # one or several target resolutions (area = r*r), in pixels
  c.num_frames = 1  # 1 = images; clips snap down to 4k+1 frames
  c.fps = 16.0  # target frame rate of the "window" selection
  c.frame_selection = "evenly"  # "evenly" over the whole clip, or a random "window" at fps
  c.invert_mask = False
  c.mask_min_value = 0.0  # weights span [mask_min_value, 1]
  c.alpha_mask = False  # use the image's alpha channel as its mask
  c.loss_multiplier = 1.0
  c.repeats = 1
  c.missing_mask = "error"  # "error" (names the files) | "unmasked" (weight 1) | "skip"
  c.random_crop = False
  c.flip_prob = 0.0
  # Image-to-video clips: the share of rows conditioned on the clip's first AND last frame
  # (first-last frame); 0 = first frame only, 1 = always, in between = drawn per row.
  c.last_frame_prob = 0.0
  c.update(overrides)
  return c


def _size(value: Any) -> int | None:
  """A whole number of pixels from an int, an integral float or digits (a command-line
  override such as `resolution=abc` arrives as the string 'abc'); None when it is not one."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  return None


def resolutions(cfg: ml_collections.ConfigDict, where: str = "dataset") -> list[int]:
  """`resolution` as a sorted list, whether one number or several were given."""
  res = cfg.resolution
  values: Sequence[Any] = res if isinstance(res, (list, tuple)) else [res]
  sizes = [_size(r) for r in values]
  if not sizes or any(s is None or s < 16 for s in sizes):
    shown = ", ".join(repr(r) for r in values) if isinstance(res, (list, tuple)) else repr(res)
    raise ValueError(f"{where}.resolution must be one or more whole sizes >= 16 pixels "
                     f"(e.g. 512 or [512, 768]), got {shown}")
  return sorted(set(sizes))


def caption_suffix(cfg: ml_collections.ConfigDict) -> str:
  """".txt" whether caption_ext was given as "txt" or ".txt"."""
  return "." + str(cfg.caption_ext).lstrip(".")


def validate(cfg: ml_collections.ConfigDict, where: str = "dataset") -> None:
  """Refuses impossible settings before any file is read."""
  if cfg.missing_mask not in MISSING_MASK_POLICIES:
    raise ValueError(f"{where}.missing_mask must be one of {MISSING_MASK_POLICIES}")
  if not 0.0 <= cfg.caption_dropout_rate <= 1.0:
    raise ValueError(f"{where}.caption_dropout_rate must be in [0, 1]")
  last = cfg.get("last_frame_prob", 0.0)
  if isinstance(last, bool) or not isinstance(last, (int, float)) or not 0.0 <= last <= 1.0:
    raise ValueError(f"{where}.last_frame_prob must be a number in [0, 1] (0 = off, 1 = every "
                     f"clip row), got {last!r}")
  if not 0.0 <= cfg.mask_min_value < 1.0:
    raise ValueError(f"{where}.mask_min_value must be in [0, 1)")
  if int(cfg.repeats) < 1 or int(cfg.num_frames) < 1:
    raise ValueError(f"{where}.repeats and {where}.num_frames must be >= 1")
  if cfg.frame_selection not in SELECTIONS:
    raise ValueError(f"{where}.frame_selection must be one of {SELECTIONS}")
  if not isinstance(cfg.get("trigger_word", ""), str):
    raise ValueError(f"{where}.trigger_word must be text, got {cfg.trigger_word!r}")
  resolutions(cfg, where)

"""Wan 2.2 TI2V-5B with masked loss: one 5B model that animates a prompt, or a prompt and a start
image, trained as one LoRA for both; caches, previews.

  python convert/wan22.py /ckpt/Wan2.2-TI2V-5B /ckpt/wan22-5b-jax   # once
  python launch.py --config configs/wan22_5b_masked.py \
      --config.model.name_or_path=/ckpt/wan22-5b-jax \
      --config.datasets[0].folder_path=/data/clips --config.datasets[0].mask_path=/data/masks \
      --workdir runs/clips
  python launch.py --config configs/wan22_5b_masked.py:tiny   # the built-in demo, CPU, minutes

Everything is configs/wan22_masked.py's, except what the 5B changes (upstream Wan2.2
`wan/configs/wan_ti2v_5B.py`): one model for every timestep (no second expert, no boundary), the
Wan 2.2 VAE (16x16 pixels and 4 frames per latent, 48 channels: sides are multiples of 32
pixels), 121 frames at 24 fps, previews at 704x1280 with shift 5.0 and guidance 5.0. With
probability `ti2v.i2v_prob` a clip trains image-to-video (its first latent frame given, clean,
at timestep 0, left out of the loss), otherwise text-to-video (wan_jax/tasks/ti2v.py). Previews
are text-to-video, or image-to-video from `preview.images` (one image or "" per prompt).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from wan_jax.config_file import load_config_file
from wan_jax.data.config import dataset_config
from wan_jax.tasks.ti2v import ti2v_config
from wan_jax.variants import get_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in (None, "", "default", "tiny"):
    raise ValueError(f"unknown variant {variant!r}; use configs/wan22_5b_masked.py or ...:tiny")
  tiny = variant == "tiny"
  base = str(Path(__file__).with_name("wan22_masked.py")) + (":tiny" if tiny else "")
  c = load_config_file(base)
  release = get_variant("tiny_ti2v" if tiny else "wan22_ti2v_5b")  # wan_jax/variants.py
  c.model.arch = release.arch
  c.model.boundary = release.boundary  # 0: the one model takes every timestep
  c.model.train_high_noise = True  # the one model sits in the first ("high") slot
  c.model.train_low_noise = False
  c.ti2v = ti2v_config()
  c.save.name = "demo_5b_lora" if tiny else "wan22_5b_lora"
  c.preview.shift = release.preview.shift
  c.preview.guidance_low_noise, c.preview.guidance_high_noise = release.preview.guidance
  c.preview.images = []  # optional: a start image (or "") per prompt
  c.preview.fps = release.preview.fps  # 24
  if tiny:  # previews: text-to-video, then from a generated start image
    c.preview.prompts = ["a red ball rolling to the right"] * 2
    c.datasets[0].num_frames = 5
    c.datasets[0].default_caption = "a coloured ball rolling to the right"
    return c
  c.preview.num_steps = release.preview.steps
  c.preview.height, c.preview.width, c.preview.num_frames = 704, 1280, 121
  c.datasets = [dataset_config(resolution=[704], num_frames=121, fps=float(release.preview.fps),
                               mask_min_value=0.1)]
  return c

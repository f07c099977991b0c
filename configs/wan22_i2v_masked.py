"""Wan 2.2 I2V-A14B (image-to-video) with masked loss: LoRA on both experts, caches, previews
animated from your own images.

  python convert/wan22.py /ckpt/Wan2.2-I2V-A14B /ckpt/wan22-i2v-jax   # once
  python launch.py --config configs/wan22_i2v_masked.py \
      --config.model.name_or_path=/ckpt/wan22-i2v-jax \
      --config.datasets[0].folder_path=/data/clips --config.datasets[0].mask_path=/data/masks \
      --config.preview.images='["/data/start.png"]' --workdir runs/clips
  python launch.py --config configs/wan22_i2v_masked.py:tiny   # the built-in demo, CPU, minutes

Everything is configs/wan22_masked.py's, except what image-to-video changes (upstream Wan2.2
`wan/configs/wan_i2v_A14B.py`): the experts switch at t = 0.900 x 1000, previews sample with shift
5.0 and guidance 3.5 for both experts, and each preview prompt starts from an image
(`preview.images`, one per prompt). Each clip's first frame conditions the rest (cached beside its
latents); the loss covers every frame. Still images train too, as ai-toolkit trains them
(`image_i2v`, below; docs/training.md, "Still images for image-to-video"). First-last frame: a
data set's `last_frame_prob` (0 off, 1 always, 0.5 half the rows) conditions its clips on their
first and last frames, and `preview.last_images` ends each preview on an image
(docs/training.md, "First-last frame"):

  python launch.py --config configs/wan22_i2v_masked.py ... \
      --config.datasets[0].last_frame_prob=0.5 \
      --config.preview.images='["/data/start.png"]' --config.preview.last_images='["/data/end.png"]'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from wan_jax.tasks.i2v_images import image_i2v_config
from wan_jax.variants import get_variant


def _t2v_config(variant: str | None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("wan22_masked", Path(__file__).with_name("wan22_masked.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in (None, "", "default", "tiny"):
    raise ValueError(f"unknown variant {variant!r}; use configs/wan22_i2v_masked.py or ...:tiny")
  c = _t2v_config(variant)
  release = get_variant("tiny_i2v" if variant == "tiny" else "wan22_i2v_a14b")  # variants.py
  c.model.arch = release.arch
  c.model.boundary = release.boundary  # 0.900: t >= 900 -> the high-noise expert
  c.save.name = "demo_i2v_lora" if variant == "tiny" else "wan22_i2v_lora"
  c.preview.shift = release.preview.shift
  c.preview.guidance_low_noise, c.preview.guidance_high_noise = release.preview.guidance
  c.preview.prompts = (["a red ball rolling to the right"] if variant == "tiny" else
                       ["the person turns and smiles, natural light"])
  # One start image per prompt; the tiny demo generates one when this is empty.
  c.preview.images = []
  # First-last frame: the image each preview ends on, one path or "" per prompt ([]: none).
  c.preview.last_images = []
  # Still images (num_frames 1) train as ai-toolkit trains them: with an empty condition, and
  # optionally on a degraded copy of themselves or as static clips (wan_jax/tasks/i2v_images.py).
  c.image_i2v = image_i2v_config()
  if variant == "tiny":
    c.datasets[0].num_frames = 5  # clips: the first frame conditions the other four
    c.datasets[0].default_caption = "a coloured ball rolling to the right"
  return c

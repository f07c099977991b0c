"""ai-toolkit's still-image I2V example job (config/examples/train_lora_wan22_14b_i2v_image_clip_24gb.yaml,
2026) through launch.py: it maps without refusal (model_kwargs.image_i2v_* onto image_i2v.*) and
trains a tiny I2V from still images. The other job files are tests/test_ai_toolkit_job.py's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # launch.py lives at the repository's root

import launch  # noqa: E402
from wan_jax.jobs.ai_toolkit import JobError, load_job  # noqa: E402

P = "config.process[0]"


def write_job(tmp_path: Path, text: str, **subs: str) -> Path:
  path = tmp_path / "job.yaml"
  path.write_text(text.format(out=str(tmp_path / "output"), ckpt=str(tmp_path), **subs))
  return path


# ai-toolkit's config/examples/train_lora_wan22_14b_i2v_image_clip_24gb.yaml (2026): its keys and
# values, with the folder, model and start image pointed at local files.
I2V_IMAGE_CLIP_JOB = """\
job: extension
config:
  name: "my_first_wan22_14b_i2v_image_clip_lora_v1"
  process:
    - type: 'sd_trainer'
      training_folder: "{out}"
      device: cuda:0
      network: {{type: "lora", linear: 32, linear_alpha: 32}}
      save: {{dtype: float16, save_every: 250, max_step_saves_to_keep: 4}}
      datasets:
        - folder_path: "{data}"
          caption_ext: "txt"
          caption_dropout_rate: 0.05
          num_frames: 1
          resolution: [512, 768, 1024]
      train:
        batch_size: 1
        steps: 2000
        gradient_accumulation: 1
        train_unet: true
        train_text_encoder: false
        gradient_checkpointing: true
        noise_scheduler: "flowmatch"
        timestep_type: 'linear'
        optimizer: "adamw8bit"
        lr: 1e-4
        optimizer_params: {{weight_decay: 1e-4}}
        dtype: bf16
        switch_boundary_every: 10
        cache_text_embeddings: true
      model:
        name_or_path: "{ckpt}"
        arch: '{arch}'
        quantize: true
        quantize_te: true
        qtype_te: "qfloat8"
        low_vram: true
        model_kwargs:
          train_high_noise: true
          train_low_noise: true
          image_i2v_clip_training: true
          image_i2v_clip_training_prob: 0.25
          image_i2v_clip_num_frames: 5
          image_i2v_clip_blur_sigma: 24.0
          image_i2v_clip_downscale_factor: 0.0625
      sample:
        sampler: "flowmatch"
        sample_every: 250
        width: 1024
        height: 1024
        num_frames: 5
        fps: 16
        prompts:
          - "woman with red hair, playing chess at the park --ctrl_img {start}"
          - "a person wearing a denim jacket, cinematic lighting --ctrl_img {start}"
        neg: ""
        seed: 42
        walk_seed: true
        guidance_scale: 3.5
        sample_steps: 25
meta:
  name: "[name]"
  version: '1.0'
"""


def _image_folder(root: Path) -> Path:
  root.mkdir()
  rng = np.random.default_rng(0)
  for stem in ("a", "b"):  # one size: one bucket (and one static-clip bucket)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(root / f"{stem}.png")
    (root / f"{stem}.txt").write_text(f"still {stem}")
  return root


def test_ai_toolkits_image_clip_example_maps_without_refusal(tmp_path):
  start = tmp_path / "start.png"
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(start)
  path = write_job(tmp_path, I2V_IMAGE_CLIP_JOB, data=str(tmp_path), start=str(start),
                   arch="wan22_14b_i2v")
  job = load_job(path, launch._python_config)
  c = job.config
  assert c.model.arch == "wan22_i2v_a14b" and c.datasets[0].num_frames == 1
  assert (c.image_i2v.clip_training, c.image_i2v.clip_training_prob, c.image_i2v.clip_num_frames,
          c.image_i2v.clip_blur_sigma, c.image_i2v.clip_downscale_factor,
          c.image_i2v.conditioning) == (True, 0.25, 5, 24.0, 0.0625, False)
  assert c.model.quantize == "fp8" and c.train.offload_inactive_expert is True
  assert list(c.preview.images) == [str(start)] * 2
  notices = "\n".join(job.notices)
  assert "a static 5-frame clip on a blurred copy (25% of batches)" in notices
  assert not any("image_i2v" in p for p, _ in job.unused)
  odd = I2V_IMAGE_CLIP_JOB.replace("image_i2v_clip_num_frames: 5", "image_i2v_clip_num_frames: 7")
  job = load_job(write_job(tmp_path, odd, data=str(tmp_path), start=str(start),
                           arch="wan22_14b_i2v"), launch._python_config)
  assert job.config.image_i2v.clip_num_frames == 5  # (n // 4) * 4 + 1, as ai-toolkit rounds
  assert any("image_i2v_clip_num_frames 7: static clips have 5 frames" in n for n in job.notices)
  bad = I2V_IMAGE_CLIP_JOB.replace("clip_training_prob: 0.25", "clip_training_prob: 2")
  with pytest.raises(JobError, match=r"model_kwargs.image_i2v_clip_training_prob must be in "):
    load_job(write_job(tmp_path, bad, data=str(tmp_path), start=str(start),
                       arch="wan22_14b_i2v"), launch._python_config)
  # A text-to-video job lists the keys as unused, with the reason.
  t2v = load_job(write_job(tmp_path, I2V_IMAGE_CLIP_JOB, data=str(tmp_path), start=str(start),
                           arch="wan22_14b"), launch._python_config)
  why = dict(t2v.unused)[f"{P}.model.model_kwargs.image_i2v_clip_training"]
  assert "image_i2v_* here" in why and "image_i2v" not in t2v.config


@pytest.mark.slow
def test_ai_toolkits_image_clip_example_trains_a_tiny_i2v_from_still_images(tmp_path):
  """The example job with arch tiny_i2v, shrunk for the CPU on the command line (steps, size,
  the switch every step); every image trains, as a still or as a static clip."""
  data = _image_folder(tmp_path / "data")
  start = tmp_path / "start.png"
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(start)
  path = write_job(tmp_path, I2V_IMAGE_CLIP_JOB, data=str(data), start=str(start),
                   arch="tiny_i2v")
  env = dict(os.environ, JAX_PLATFORMS="cpu", WAN_JAX_CACHE=str(tmp_path / "scan_cache"))
  result = subprocess.run(
      [sys.executable, str(REPO / "launch.py"), "--config", str(path), "--noprogress",
       f"--config.cache.dir={tmp_path / 'cache'}", "--config.train.steps=4",
       "--config.train.switch_boundary_every=2", "--config.datasets[0].resolution=[32]",
       "--config.preview.every=0"],
      capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "2 of 2 items are one frame: images train image-to-video with an empty condition, or a " \
         "static 5-frame clip on a blurred copy (25% of batches)" in out, out
  assert "trained 4 steps" in out
  forms = re.search(r"image-to-video rows by how they trained: (.*)", out).group(1)
  assert forms == "1 image, 3 image as a static clip", forms  # drawn from (seed, batch)
  run = tmp_path / "output" / "my_first_wan22_14b_i2v_image_clip_lora_v1"
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["expert"] for r in rows] == ["high", "high", "low", "low"]
  assert all(np.isfinite(r["loss"]) for r in rows)
  for expert in ("high", "low"):
    assert (run / f"lora/my_first_wan22_14b_i2v_image_clip_lora_v1_{expert}_noise.safetensors"
            ).is_file()

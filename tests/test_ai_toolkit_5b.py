"""An ai-toolkit job for Wan 2.2 TI2V-5B (`arch: wan22_5b`, as ai-toolkit's UI writes one) maps onto
configs/wan22_5b_masked.py: one model, `do_i2v` as the share of clips trained image-to-video,
samples with an optional start image, sides a multiple of 32."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # launch.py lives at the repository's root

import launch  # noqa: E402
from wan_jax.jobs.ai_toolkit import JobError, load_job  # noqa: E402

P = "config.process[0]"
JOB = """\
job: extension
config:
  name: "ball_5b_v1"
  process:
    - type: 'ui_trainer'
      training_folder: "{out}"
      trigger_word: "r3dball"
      network: {{type: "lora", linear: 32, linear_alpha: 32}}
      save: {{dtype: bf16, save_every: 250, max_step_saves_to_keep: 4}}
      datasets:
        - folder_path: "/data/clips"
          mask_path: "/data/clip_masks"
          resolution: [ 768 ]
          num_frames: 121
          fps: 24
          do_i2v: {do_i2v}
        - folder_path: "/data/more_clips"
          resolution: [ 768 ]
          num_frames: 121
          do_i2v: {more_i2v}
      train:
        batch_size: 1
        steps: 3000
        gradient_checkpointing: true
        noise_scheduler: "flowmatch"
        timestep_type: "sigmoid"
        optimizer: "adamw8bit"
        lr: 1e-4
        dtype: bf16
      model:
        name_or_path: "{ckpt}"
        arch: 'wan22_5b'
        quantize: false
        model_kwargs: {{}}
      sample:
        sampler: "flowmatch"
        sample_every: 250
        width: {width}
        height: 768
        num_frames: 121
        fps: 24
        samples:
          - prompt: "[trigger] rolling down a hill"
          - prompt: "[trigger] bouncing"
            ctrl_img: "/data/start.png"
        guidance_scale: 4
        sample_steps: 30
"""


def job(tmp_path: Path, do_i2v: str = "true", more_i2v: str = "true", width: int = 768):
  path = tmp_path / "job.yaml"
  path.write_text(JOB.format(out=tmp_path / "output", ckpt=tmp_path, do_i2v=do_i2v,
                             more_i2v=more_i2v, width=width))
  return load_job(path, launch._python_config)


def test_a_wan22_5b_job_maps_onto_the_5b_config(tmp_path):
  mapped = job(tmp_path)
  c, p = mapped.config, mapped.config.preview
  assert (c.model.arch, c.model.boundary) == ("wan22_ti2v_5b", 0.0)
  assert (c.model.train_high_noise, c.model.train_low_noise) == (True, False)  # one model
  assert c.ti2v.i2v_prob == 1.0  # do_i2v: every clip conditioned on its first frame
  assert [d.num_frames for d in c.datasets] == [121, 121]
  assert (p.width, p.height, p.num_frames, p.num_steps) == (768, 768, 121, 30)
  assert (p.guidance_low_noise, p.guidance_high_noise, p.shift, p.fps) == (4.0, 4.0, 5.0, 24)
  assert list(p.images) == ["", "/data/start.png"]  # optional: the first sample is text-only
  assert not any("ctrl_img" in path or "do_i2v" in path for path, _ in mapped.unused)


def test_do_i2v_sets_the_share_of_image_to_video_rows_and_sides_are_multiples_of_32(tmp_path):
  assert job(tmp_path, "false", "false").config.ti2v.i2v_prob == 0.0  # text-to-video only
  mixed = job(tmp_path, "true", "false")
  assert mixed.config.ti2v.i2v_prob == 1.0
  assert f"{P}.datasets[*].do_i2v: set on some data sets only" in "\n".join(mixed.notices)
  with pytest.raises(JobError, match=re.escape(f"{P}.sample.width must be a multiple of 32 "
                                               "pixels, got 720")):
    job(tmp_path, width=720)


def test_the_tiny_5b_arch_maps_onto_the_demo(tmp_path):
  path = tmp_path / "job.yaml"
  path.write_text("job: extension\nconfig:\n  name: demo\n  process:\n"
                  "    - model: {arch: tiny_ti2v}\n      sample: {prompts: [a ball rolls]}\n")
  c = load_job(path, launch._python_config).config
  assert (c.model.arch, c.model.boundary, c.ti2v.i2v_prob) == ("tiny_ti2v", 0.0, 0.5)


def test_hub_ids_name_the_5b_release_and_refuse_another_models(tmp_path):
  path = tmp_path / "job.yaml"

  def load(arch: str, ckpt: str):
    text = JOB.format(out=tmp_path / "output", ckpt=ckpt, do_i2v="true", more_i2v="true",
                      width=768).replace("arch: 'wan22_5b'", f"arch: '{arch}'")
    path.write_text(text)
    return load_job(path, launch._python_config)

  with pytest.raises(JobError, match=r"hub id of the Wan 2.2 TI2V-5B release; wan-jax reads "
                                     r"local files only"):
    load("wan22_5b", "Wan-AI/Wan2.2-TI2V-5B-Diffusers")
  with pytest.raises(JobError, match=r"is a Wan 2.2 T2V-A14B release but the job trains Wan 2.2 "
                                     r"TI2V-5B"):
    load("wan22_5b", "Wan-AI/Wan2.2-T2V-A14B")
  with pytest.raises(JobError, match=r"is a Wan 2.2 TI2V-5B release but the job trains Wan 2.2 "
                                     r"T2V-A14B"):
    load("wan22_14b", "Wan-AI/Wan2.2-TI2V-5B")
  path.write_text("job: extension\nconfig:\n  name: x\n  process:\n    - model: {}\n")
  with pytest.raises(JobError, match=r"arch is missing: set it to one of wan22_14b \(Wan 2.2 "
                                     r"T2V-A14B\), wan22_14b_i2v .*, wan22_5b \(Wan 2.2 TI2V-5B\)"):
    load_job(path, launch._python_config)

"""ai-toolkit job files through launch.py: the mapping, the start-up report, the errors, and one
tiny run from a YAML file. Job files are written here in ai-toolkit's shape (its
config/examples/train_lora_wan22_14b_24gb.yaml and the UI's keys)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # launch.py lives at the repository's root

import launch  # noqa: E402
from wan_jax.data.captions import apply_trigger  # noqa: E402
from wan_jax.data.config import dataset_config  # noqa: E402
from wan_jax.data.folders import scan_dataset  # noqa: E402
from wan_jax.jobs.ai_toolkit import JobError, load_job  # noqa: E402

P = "config.process[0]"

JOB = """\
job: extension
config:
  name: "person_v1"
  process:
    - type: 'sd_trainer'
      training_folder: "{out}"
      device: cuda:0
      trigger_word: "p3r5on"
      performance_log_every: 100
      network:
        type: "lora"
        linear: 16
        linear_alpha: 8
        conv: 16
      save:
        dtype: float16
        save_every: 250
        max_step_saves_to_keep: 4
        push_to_hub: false
      datasets:
        - folder_path: "/data/clips"
          mask_path: "/data/clip_masks"
          mask_min_value: 0.1
          invert_mask: true
          caption_ext: "caption"
          caption_dropout_rate: 0.05
          resolution: [ 512, 768 ]
          num_frames: 33
          fps: 16
          cache_latents_to_disk: true
          shuffle_tokens: true
        - folder_path: "/data/photos"
          trigger_word: "sks"
          default_caption: "a photo of [trigger]"
          resolution: 1024
          flip_x: true
          num_repeats: 3
          loss_multiplier: 0.5
          alpha_mask: true
      train:
        batch_size: 1
        steps: 2000
        gradient_accumulation: 1
        train_unet: true
        train_text_encoder: false
        gradient_checkpointing: true
        noise_scheduler: "flowmatch"
        timestep_type: 'shift'
        optimizer: "adamw"
        lr: 1e-4
        lr_scheduler: cosine
        optimizer_params:
          weight_decay: 1e-4
        max_grad_norm: 0.5
        dtype: bf16
        switch_boundary_every: 10
        noise_offset: 0.0
        min_snr_gamma: 5
      model:
        name_or_path: "{ckpt}"
        arch: 'wan22_14b'
        quantize: true
        qtype: "qfloat8"
        model_kwargs:
          train_high_noise: true
          train_low_noise: false
      sample:
        sampler: "flowmatch"
        sample_every: 100
        width: 832
        height: 480
        num_frames: 41
        fps: 16
        prompts:
          - "[trigger] dancing in the rain"
          - "a bear building a log cabin"
        neg: "blurry"
        seed: 42
        walk_seed: true
        guidance_scale: 3.5
        sample_steps: 25
meta:
  name: "[name]"
"""


def write_job(tmp_path: Path, text: str = JOB, **subs: str) -> Path:
  values = {"out": str(tmp_path / "output"), "ckpt": str(tmp_path), **subs}
  path = tmp_path / "job.yaml"
  path.write_text(text.format(**values))
  return path


def edit(old: str, new: str) -> str:
  assert old in JOB, old
  return JOB.replace(old, new, 1)


def test_a_wan22_job_becomes_our_config(tmp_path):
  job = load_job(write_job(tmp_path), launch._python_config)
  c = job.config
  assert c.model.arch == "wan22_t2v_a14b" and c.model.name_or_path == str(tmp_path)
  assert (c.model.train_high_noise, c.model.train_low_noise) == (True, False)
  assert c.model.dtype == "bfloat16" and c.save.name == "person_v1"
  assert (c.lora.enabled, c.lora.rank, c.lora.alpha) == (True, 16, 8.0)
  assert (c.save.dtype, c.save.every, c.checkpoint.every, c.checkpoint.keep) == (
      "float16", 250, 250, 4)
  t = c.train
  assert (t.steps, t.batch_size, t.grad_accum, t.learning_rate, t.lr_schedule) == (
      2000, 1, 1, 1e-4, "cosine")
  assert (t.weight_decay, t.max_grad_norm, t.timestep_sampling, t.switch_boundary_every) == (
      1e-4, 0.5, "shift", 10)
  clips, photos = c.datasets
  assert (clips.folder_path, clips.mask_path, clips.mask_min_value, clips.invert_mask) == (
      "/data/clips", "/data/clip_masks", 0.1, True)
  assert (list(clips.resolution), clips.num_frames, clips.fps, clips.caption_ext) == (
      [512, 768], 33, 16.0, "caption")
  assert (clips.trigger_word, photos.trigger_word) == ("p3r5on", "sks")  # process, then own
  assert (photos.flip_prob, photos.repeats, photos.loss_multiplier, photos.alpha_mask) == (
      0.5, 3, 0.5, True)
  assert photos.resolution == [1024] or list(photos.resolution) == [1024]
  assert photos.caption_dropout_rate == 0.0  # ai-toolkit's default, not ours
  p = c.preview
  assert p.prompts == ["p3r5on dancing in the rain", "a bear building a log cabin"]
  assert (p.every, p.width, p.height, p.num_frames, p.negative_prompt, p.seed) == (
      100, 832, 480, 41, "blurry", 42)
  assert (p.guidance_low_noise, p.guidance_high_noise, p.num_steps) == (3.5, 3.5, 25)
  assert job.workdir == str(tmp_path / "output" / "person_v1")
  assert any("linear_alpha 8 differs from the rank 16" in n for n in job.notices)
  assert c.model.quantize == "fp8"  # quantize: true, qtype: qfloat8
  assert any(n.startswith(f"{P}.model.quantize: the base is stored in fp8") for n in job.notices)


def test_every_key_not_used_is_listed_once_with_its_reason(tmp_path):
  job = load_job(write_job(tmp_path), launch._python_config)
  unused = dict(job.unused)
  assert set(unused) == {
      f"{P}.device", f"{P}.performance_log_every", f"{P}.network.conv",
      f"{P}.datasets[0].shuffle_tokens", f"{P}.train.min_snr_gamma", f"{P}.sample.sampler",
      f"{P}.sample.fps", f"{P}.sample.walk_seed", "meta"}
  assert set(job.off) == {f"{P}.save.push_to_hub", f"{P}.train.noise_offset"}
  report = job.report("job.yaml")
  assert report.count("min_snr_gamma") == 1 and report.count("cache_latents_to_disk") == 0


@pytest.mark.parametrize("lines, quantize, notice", [
    ("quantize: false", "none", None),
    ("quantize: true", "fp8", "the base is stored in fp8 (model.quantize=fp8"),
    ('quantize: true\n        qtype: "qint8"', "fp8", "qtype 'qint8': the base is stored in fp8"),
    ('quantize: true\n        qtype: "uint4|ostris/accuracy_recovery_adapters/wan22.safetensors"',
     "fp8", "and no accuracy-recovery adapter (its ostris/accuracy_recovery_adapters/wan22."
            "safetensors is not loaded); fp8 is 8 bits per weight"),
])
def test_quantize_maps_to_an_fp8_base(tmp_path, lines, quantize, notice):
  text = edit('quantize: true\n        qtype: "qfloat8"', lines + "\n        quantize_te: true")
  job = load_job(write_job(tmp_path, text), launch._python_config)
  assert job.config.model.quantize == quantize
  found = [n for n in job.notices if "quantize" in n or "qtype" in n]
  assert found == ([] if notice is None else [found[0]]) and (notice is None or notice in found[0])
  unused = dict(job.unused)
  if quantize == "fp8":
    assert "runs once, into the cache" in unused[f"{P}.model.quantize_te"]


def test_defaults_are_ai_toolkits_and_accumulation_counts_batches(tmp_path):
  text = edit("        lr: 1e-4\n", "").replace("        switch_boundary_every: 10\n", "")
  text = text.replace("gradient_accumulation: 1", "gradient_accumulation: 4")
  text = text.replace("        timestep_type: 'shift'\n", "")
  c = load_job(write_job(tmp_path, text), launch._python_config).config
  assert c.train.learning_rate == 1e-6 and c.train.timestep_sampling == "logit_normal"
  assert (c.train.steps, c.train.grad_accum, c.train.switch_boundary_every) == (8000, 4, 4)
  assert (c.save.every, c.preview.every) == (1000, 400)


def test_use_wandb_turns_on_wandb_with_the_jobs_project(tmp_path):
  assert load_job(write_job(tmp_path), launch._python_config).config.logging.wandb_project == ""
  logs = "      logging:\n        use_wandb: true\n        project_name: people\n        run_name: x\n"
  job = load_job(write_job(tmp_path, edit("      network:\n", logs + "      network:\n")),
                 launch._python_config)
  assert job.config.logging.wandb_project == "people" and job.config.save.name == "person_v1"
  assert "named after config.name" in dict(job.unused)[f"{P}.logging.run_name"]


@pytest.mark.parametrize("old,new,message", [
    ("      train:\n", "        - num_frames: 16\n      train:\n",
     f"{P}.datasets[2].num_frames must be 1 or 4k+1"),
    ("        lr: 1e-4", "        lr: fast", f"{P}.train.lr must be a number, got 'fast'"),
    ("resolution: 1024", "resolution: big", f"{P}.datasets[1].resolution must be one size"),
    ("        flip_x: true", "        flip_x: 0.5", f"{P}.datasets[1].flip_x must be true or false"),
    ("      network:", "      network: [16]\n      old_network:", f"{P}.network must be a mapping"),
    ("arch: 'wan22_14b'", "arch: 'wan21_i2v:14b'", f"{P}.model.arch 'wan21_i2v:14b' is another"),
    ("arch: 'wan22_14b'", "arch: 'flux'", f"{P}.model.arch 'flux' is not a Wan 2.2 model"),
    ("optimizer: \"adamw\"", "optimizer: prodigy", f"{P}.train.optimizer 'prodigy' is not"),
    ("meta:", "    - type: sd_trainer\nmeta:", "config.process has 2 entries"),
    ("job: extension", "job: extract", "job must be 'extension'"),
    ("        width: 832", "        width: 830", f"{P}.sample.width must be a multiple of 16"),
    ("  name: \"person_v1\"\n", "", "config.name is required"),
])
def test_wrong_values_are_one_line_naming_the_key_path(tmp_path, old, new, message):
  with pytest.raises(JobError) as e:
    load_job(write_job(tmp_path, edit(old, new)), launch._python_config)
  assert message in str(e.value) and "\n" not in str(e.value)


PROMPTS = """\
        prompts:
          - "[trigger] dancing in the rain"
          - "a bear building a log cabin"
"""
SAMPLES = """\
        samples:
          - prompt: "[trigger] dancing in the rain --seed 7"
            ctrl_img: "/data/start/rain.png"
          - prompt: "a bear building a log cabin --ctrl_img /data/start/bear.png"
"""


def i2v_job(samples: str = SAMPLES, arch: str = "wan22_14b_i2v") -> str:
  return edit(PROMPTS, samples).replace("arch: 'wan22_14b'", f"arch: '{arch}'")


def test_an_i2v_job_maps_onto_the_i2v_config_with_its_start_images(tmp_path):
  job = load_job(write_job(tmp_path, i2v_job()), launch._python_config)
  c, p = job.config, job.config.preview
  assert (c.model.arch, c.model.boundary, p.shift) == ("wan22_i2v_a14b", 0.9, 5.0)
  assert p.images == ["/data/start/rain.png", "/data/start/bear.png"]  # the flag counts too
  assert p.prompts == ["p3r5on dancing in the rain", "a bear building a log cabin"]
  assert (p.guidance_low_noise, p.num_frames, c.train.steps) == (3.5, 41, 2000)  # the file's
  notices = "\n".join(job.notices)
  assert "0.875" in notices and "--seed in the prompts is removed" in notices
  assert (f"{P}.datasets[1]: num_frames 1 (images) trains image-to-video as ai-toolkit does: an "
          "empty condition") in notices
  assert not any("ctrl_img" in path for path, _ in job.unused)
  t2v = load_job(write_job(tmp_path, i2v_job(arch="wan22_14b")), launch._python_config)
  assert dict(t2v.unused)[f"{P}.sample.samples[0].ctrl_img"].startswith("a start image")
  assert "preview.images" not in t2v.config.preview or not list(t2v.config.preview.images)
  images_only = i2v_job().replace("num_frames: 33\n          fps", "num_frames: 1\n          fps")
  c = load_job(write_job(tmp_path, images_only), launch._python_config).config
  assert [d.num_frames for d in c.datasets] == [1, 1]  # trained, as ai-toolkit trains them


def test_a_tiny_i2v_job_maps_and_generates_its_start_image(tmp_path):
  text = ("job: extension\nconfig:\n  name: demo\n  process:\n    - model: {{arch: tiny_i2v}}\n"
          "      sample: {{prompts: [a ball rolls]}}\n")
  c = load_job(write_job(tmp_path, text), launch._python_config).config
  assert (c.model.arch, c.model.boundary, c.datasets[0].num_frames) == ("tiny_i2v", 0.9, 5)
  assert c.preview.prompts == ["a ball rolls"] and list(c.preview.images) == []


@pytest.mark.parametrize("samples,message", [
    (SAMPLES.replace('            ctrl_img: "/data/start/rain.png"\n', ""),
     f"{P}.sample.samples[0].ctrl_img is missing: an image-to-video preview starts from an image"),
    (PROMPTS, f"{P}.sample.prompts[0] --ctrl_img is missing"),
])
def test_an_i2v_sample_without_a_start_image_is_one_line(tmp_path, samples, message):
  with pytest.raises(JobError) as e:
    load_job(write_job(tmp_path, i2v_job(samples)), launch._python_config)
  assert message in str(e.value) and "\n" not in str(e.value)
  text = i2v_job(samples).replace("sample_every: 100", "sample_every: 0")  # no previews: runs
  c = load_job(write_job(tmp_path, text), launch._python_config).config
  assert c.preview.every == 0 and list(c.preview.images) == []


def test_a_hub_id_says_how_to_download_and_convert(tmp_path, capsys):
  path = write_job(tmp_path, ckpt="ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16")
  assert launch.main(["--config", str(path)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"{P}.model.name_or_path" in err
  assert "huggingface-cli download ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16" in err
  assert "python convert/wan22.py" in err
  with pytest.raises(JobError, match="I2V-A14B release; wan-jax reads local files only"):
    load_job(write_job(tmp_path, i2v_job(), ckpt="ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16"),
             launch._python_config)
  with pytest.raises(JobError, match="is a Wan 2.2 T2V-A14B release but the job trains Wan 2.2 "
                                     "I2V-A14B"):
    load_job(write_job(tmp_path, i2v_job(), ckpt="Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
             launch._python_config)


def test_print_config_shows_what_a_python_or_yaml_config_became(tmp_path, capsys):
  assert launch.main(["--config", f"{REPO}/configs/wan22_masked.py:tiny", "--print_config",
                      "--config.train.steps=3", "--config.datasets[0].trigger_word=zx"]) == 0
  out = capsys.readouterr()
  cfg = json.loads(out.out)
  assert cfg["train"]["steps"] == 3 and cfg["datasets"][0]["trigger_word"] == "zx"
  assert out.err == ""

  path = write_job(tmp_path)
  assert launch.main(["--config", str(path), "--print_config", "--config.train.steps=7",
                      "--config.datasets[1].num_frames=5"]) == 0
  out = capsys.readouterr()
  cfg = json.loads(out.out)  # JSON alone on stdout; the report on stderr
  assert cfg["train"]["steps"] == 7 and cfg["datasets"][1]["num_frames"] == 5
  assert cfg["datasets"][0]["resolution"] == [512, 768] and cfg["lora"]["alpha"] == 8.0
  assert "not used:" in out.err and out.err.count(f"{P}.device") == 1


def test_trigger_words_in_captions_as_ai_toolkit(tmp_path):
  assert apply_trigger("[trigger] on a beach", "sks") == "sks on a beach"
  assert apply_trigger("a man on a beach", "sks") == "sks a man on a beach"  # put in front
  assert apply_trigger("a photo of sks", "sks") == "a photo of sks"  # present: untouched
  assert apply_trigger("a [trigger] photo", "") == "a photo"  # no trigger: placeholder removed
  assert apply_trigger("[trigger] dancing", "sks", add_if_missing=False) == "sks dancing"
  assert apply_trigger("a cat", "sks", add_if_missing=False) == "a cat"  # prompts: no prefix
  for stem, caption in (("a", "[trigger] in red"), ("b", "a dog"), ("c", None)):
    Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).save(tmp_path / f"{stem}.png")
    if caption is not None:
      (tmp_path / f"{stem}.txt").write_text(caption)
  cfg = dataset_config(folder_path=str(tmp_path), resolution=[16], trigger_word="zx",
                       default_caption="")
  captions = {i.media.stem: i.caption for i in scan_dataset(cfg, cache_dir=None).items}
  assert captions == {"a": "zx in red", "b": "zx a dog", "c": "zx"}


TINY_JOB = """\
job: extension
config:
  name: "yaml_demo"
  process:
    - type: 'sd_trainer'
      training_folder: "{out}"
      trigger_word: "zx"
      network: {{type: lora, linear: 4, linear_alpha: 4}}
      save: {{dtype: float32, save_every: 2}}
      datasets:
        - folder_path: "{data}"
          mask_path: "{masks}"
          resolution: [32]
          mask_min_value: 0.1
          default_caption: "a [trigger] ball"
      train: {{steps: 2, batch_size: 2, lr: 2e-3, timestep_type: linear, dtype: fp32,
              switch_boundary_every: 1, disable_sampling: true}}
      model: {{arch: tiny, quantize: true}}
"""


@pytest.mark.slow
def test_the_tiny_demo_trains_from_a_yaml_job(tmp_path):
  """Two masked images of one size: one bucket, so the run compiles as little as it can."""
  data, masks = tmp_path / "data", tmp_path / "masks"
  data.mkdir(), masks.mkdir()
  rng = np.random.default_rng(0)
  for stem in ("a", "b"):
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(data / f"{stem}.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(masks / f"{stem}.png")
  (data / "a.txt").write_text("[trigger] in red")
  path = write_job(tmp_path, TINY_JOB, data=str(data), masks=str(masks))
  env = dict(os.environ, JAX_PLATFORMS="cpu", WAN_JAX_CACHE=str(tmp_path / "scan_cache"))
  result = subprocess.run(
      [sys.executable, str(REPO / "launch.py"), "--config", str(path), "--noprogress",
       f"--config.cache.dir={tmp_path / 'cache'}"],
      capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert f"notice: {P}.model.quantize: the base is stored in fp8" in out  # a tiny fp8 run
  assert "trained 2 steps" in out
  run = tmp_path / "output" / "yaml_demo"  # training_folder/name, as ai-toolkit
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["expert"] for r in rows] == ["high", "low"]  # switch_boundary_every 1
  assert (run / "lora/yaml_demo_high_noise.safetensors").is_file()
  assert not (run / "previews").exists()  # disable_sampling


@pytest.mark.parametrize("arg,message", [
    ("--config.train.stepz=5", "--config.train.stepz: there is no key train.stepz; did you mean "
                               "train.steps?"),
    ("--config.datasets[1].folder_path=x", "datasets has 1 entry (datasets[0])"),
    ("--config.datasets[0].resolution=abc", "datasets[0].resolution must be one or more whole "
                                            "sizes >= 16 pixels (e.g. 512 or [512, 768]), got "
                                            "'abc'"),
    ("--config.train.steps=abc", "--config.train.steps=abc"),
    ("--config.model.train_high_noise=maybe", "--config.model.train_high_noise=maybe"),
    ("--config.train.steps.x=1", "train.steps is a value (24), not a section"),
])
def test_command_line_mistakes_are_one_line(tmp_path, capsys, arg, message):
  assert launch.main([arg, "--workdir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
  for name in ("nothere.py", "nothere.yaml"):
    assert launch.main(["--config", str(tmp_path / name), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and len(err.splitlines()) == 1, err


def test_overrides_on_a_job_are_checked_and_lists_are_taken(tmp_path, capsys):
  path = write_job(tmp_path)
  assert launch.main(["--config", str(path), "--config.datasets[2].num_frames=5"]) == 2
  assert "datasets has 2 entries (datasets[0]..datasets[1])" in capsys.readouterr().err
  assert launch.main(["--config", str(path), "--print_config",
                      '--config.preview.prompts=["a fox", "a [trigger] owl"]',
                      "--config.lora.targets", '["ffn.*"]']) == 0
  cfg = json.loads(capsys.readouterr().out)
  assert cfg["preview"]["prompts"] == ["a fox", "a [trigger] owl"]  # as typed: no job rules
  assert cfg["lora"]["targets"] == ["ffn.*"]


def _billion_laughs() -> str:
  """9 levels of 10 aliases (1.3 KB): 10^9 strings if every alias were expanded."""
  lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
  lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
  return "job: extension\nconfig:\n  name: lol\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("content,message", [
    (_billion_laughs(), "expands to more than 100,000 values through its YAML aliases"),
    ("job: extension\nconfig:\n  name: \xff\xfe\n".encode("latin-1"), "is not a UTF-8 text file"),
    ("[" * 20000 + "]" * 20000, "nests its values too deeply"),
    ("job: extension\nconfig: &c {name: x, process: [*c]}\n", "a YAML alias refers to a value "
                                                             "that contains it"),
    (b"job: x\n" + b"#" * (1 << 20), "is larger than 1 MiB"),
])
def test_a_hostile_or_broken_job_file_is_one_line_in_bounded_memory(tmp_path, capsys, content,
                                                                   message):
  import tracemalloc
  path = tmp_path / "job.yaml"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  aliases = "aliases" in message  # memory measured where it was the problem (tracemalloc is slow)
  if aliases:
    tracemalloc.start()
  try:
    assert launch.main(["--config", str(path), "--workdir", str(tmp_path / "run")]) == 2
    peak = tracemalloc.get_traced_memory()[1] if aliases else 0
  finally:
    tracemalloc.stop()
  err = capsys.readouterr().err.strip()
  assert message in err and str(path) in err and len(err.splitlines()) == 1, err
  assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"
  assert not (tmp_path / "run").exists()

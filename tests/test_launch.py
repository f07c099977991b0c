"""The README's first command: `python launch.py` runs the tiny demo end to end on real files:
caches, both experts trained, checkpoints, LoRA files, previews, metrics and the loss plot."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from safetensors import safe_open

from helpers import launch, sample

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_demo_trains_and_hands_over_every_file(tmp_path):
  cache = f"--config.cache.dir={tmp_path / 'cache'}"
  first = launch("--workdir", str(tmp_path / "run"), "--cache_only", cache)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "caches are complete" in first.stdout and "built 10 latents" in first.stdout
  assert not (tmp_path / "run/checkpoints").exists()

  result = launch("--workdir", str(tmp_path / "run"), cache)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "5 items, 0 skipped" in out and "(5, 48, 64)" in out  # images and the clip, bucketed
  assert "0 latents, 0 weight maps, 0 prompt embeddings" in out.replace("built ", "")  # all reused
  assert "trained 24 steps" in out and "nan" not in out.lower()
  assert "memory plan: save_attention, both experts on the device (the fastest; cpu reports no " \
         "memory limit" in out  # the plan line, before the experts load

  run = tmp_path / "run"
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 25))
  assert {r["expert"] for r in rows} == {"high", "low"} and all(np.isfinite(r["loss"]) for r in rows)
  assert sorted(p.name for p in (run / "lora").iterdir()) == [
      "demo_lora_000012_high_noise.safetensors", "demo_lora_000012_low_noise.safetensors",
      "demo_lora_high_noise.safetensors", "demo_lora_low_noise.safetensors"]
  with safe_open(run / "lora/demo_lora_low_noise.safetensors", "np") as f:
    keys = set(f.keys())
    final = f.metadata()
  # Every file records the global step; the expert's own count (12 of the 24 steps) apart.
  assert (final["step"], final["expert_step"]) == ("24", "12")
  assert final["modelspec.architecture"] == "wan-2.2-t2v-tiny-low-noise/lora"
  assert final["modelspec.title"] == "demo_lora (low-noise expert)"
  assert final["lora_rank"] == "4" and final["num_items"] == "5"
  with safe_open(run / "lora/demo_lora_000012_high_noise.safetensors", "np") as f:
    numbered = f.metadata()
  assert (numbered["step"], numbered["expert_step"]) == ("12", "8")  # steps 1-4 and 9-12
  assert numbered.keys() == final.keys()
  assert "diffusion_model.blocks.1.cross_attn.o.lora_B.weight" in keys
  assert "diffusion_model.blocks.0.ffn.2.lora_A.weight" in keys
  assert len([k for k in keys if k.endswith("lora_A.weight")]) == 2 * 10  # 2 blocks x 10 linears
  videos = sorted((run / "previews").glob("*.mp4"))
  assert [v.name for v in videos] == ["step_000012_0.mp4", "step_000024_0.mp4"]
  assert iio.imread(videos[-1], plugin="pyav").shape == (5, 64, 64, 3)
  assert (run / "loss.png").stat().st_size > 1000  # one panel per expert: test_plot.py
  assert (run / "checkpoints/24").is_dir() and (run / "checkpoints/12").is_dir()

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(run / "tensorboard"))
  events.Reload()
  high = [s for s in range(1, 25) if (s - 1) // 4 % 2 == 0]  # switch_boundary_every=4
  assert [e.step for e in events.Scalars("loss/high_noise")] == high
  assert [e.step for e in events.Scalars("loss_avg/low_noise")] == sorted({*range(1, 25)} - {*high})
  assert [e.step for e in events.Images("preview/0")] == [12, 24]  # the clips, as GIFs

  stamps = {p: p.stat().st_mtime_ns for p in [*(run / "lora").iterdir(), *videos]}
  again = launch("--workdir", str(run), cache)  # finished: nothing to redo, nothing written
  assert again.returncode == 0 and f"the run in {run} is done" in again.stdout
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

  # Sampling with what the run handed over (`python sample.py --run runs/demo --prompt ...`, the
  # README's command): its config and final LoRA files; the same arguments give the same bytes.
  rendered = []
  for i in range(2):
    r = sample("--run", run, "--prompt", "a red ball", "--out", tmp_path / f"sampled{i}",
               "--steps", "2", "--height", "32", "--width", "32", "--frames", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    rendered.append(Path(r.stdout.split()[-1]))
  assert rendered[0] == tmp_path / "sampled0/sample_seed0_0.mp4"
  assert rendered[0].read_bytes() == rendered[1].read_bytes()  # two processes, the same bytes
  assert iio.imread(rendered[0], plugin="pyav").shape == (5, 32, 32, 3)
  assert "a red ball" in (tmp_path / "sampled0/sample_seed0.txt").read_text()
  assert "demo_lora_high_noise.safetensors" in r.stderr + r.stdout  # the run's final files

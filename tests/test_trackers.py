"""The dashboards: TensorBoard events read back with tensorboard's own reader (per-expert tags,
previews, the config, a resumed run's steps once each), and W&B's one-line failures.
The offline W&B run of a real training run, resumed, is in test_train.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from wan_jax.train.outputs.media_out import write_png, write_video
from wan_jax.train.outputs.trackers import ExpertScalars, Trackers, preview_tag
from wan_jax.train.run.validate import check_run_config
from wan_jax.train.outputs.wandb_log import WandbUnavailable, open_wandb

from helpers import get_config


def row(step: int, expert: str, loss: float, skipped: bool = False) -> dict:
  return {"step": step, "loss": loss, "lr": 1e-3 * step, "grad_norm": 0.5, "step_time": 0.25,
          "tokens_per_s": 96.0, "t_mean": 900.0 if expert == "high" else 300.0,
          "expert": expert, "skipped": skipped}


# high, high, low, low, high (skipped), high
ROWS = [row(1, "high", 0.4), row(2, "high", 0.2), row(3, "low", 0.05), row(4, "low", 0.03),
        row(5, "high", float("nan"), skipped=True), row(6, "high", 0.3)]


def test_each_expert_has_its_own_curves_and_skipped_steps_are_counted():
  scalars = ExpertScalars(window=2)
  out = [scalars(r) for r in ROWS]
  assert out[0]["loss/high_noise"] == 0.4 and "loss/low_noise" not in out[0]
  assert out[3]["loss_avg/low_noise"] == pytest.approx(0.04)
  assert "loss/high_noise" not in out[4] and out[4]["train/skipped_steps"] == 1
  assert out[5]["loss_avg/high_noise"] == pytest.approx(0.25)  # the last two applied: 0.2, 0.3
  assert out[5]["lr/high_noise"] == pytest.approx(6e-3) and out[2]["timestep/low_noise"] == 300
  assert out[5]["speed/step_time_s"] == 0.25 and out[5]["speed/tokens_per_s"] == 96.0
  assert preview_tag(Path("previews/step_000012_0.mp4")) == "preview/0"


@pytest.mark.slow
def test_tensorboard_shows_per_expert_scalars_previews_and_the_config_and_a_resume_once(tmp_path):
  cfg = get_config()
  clip = write_video(np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), np.uint8),
                     tmp_path / "previews/step_000002_0.mp4")
  still = write_png(np.full((32, 48, 3), 200, np.uint8), tmp_path / "previews/step_000002_1.png")
  first = Trackers(cfg, tmp_path, lambda: [])
  for r in ROWS[:5]:
    first.log(r["step"], r)
  first.previews(2, [clip, still], ["a ball", "a still ball"])
  first.close()
  # Resumed from a checkpoint at step 3: steps 4 and 5 are logged again, then 6.
  second = Trackers(cfg, tmp_path, lambda: ROWS[:5])
  for r in ROWS[3:]:
    second.log(r["step"], r)
  second.close()

  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  tags = events.Tags()
  assert {"loss/high_noise", "loss/low_noise", "loss_avg/high_noise", "loss_avg/low_noise",
          "lr/high_noise", "grad_norm/low_noise", "speed/step_time_s", "speed/tokens_per_s",
          "train/skipped_steps"} <= set(tags["scalars"])
  assert "loss" not in tags["scalars"]  # no curve mixes the experts
  assert [e.step for e in events.Scalars("loss/high_noise")] == [1, 2, 6]
  assert [e.step for e in events.Scalars("loss/low_noise")] == [3, 4]  # 4 once, after the resume
  # The resumed run's average continues from the rows before it: (0.4 + 0.2 + 0.3) / 3.
  assert events.Scalars("loss_avg/high_noise")[-1].value == pytest.approx(0.3)
  assert [e.value for e in events.Scalars("train/skipped_steps")][-1] == 1
  assert sorted(tags["images"]) == ["preview/0", "preview/1"]
  gif = events.Images("preview/0")[0]
  assert gif.step == 2 and gif.encoded_image_string[:6] == b"GIF89a"
  assert (gif.width, gif.height) == (48, 32)
  assert events.Images("preview/1")[0].encoded_image_string[:4] == b"\x89PNG"
  assert any(t.startswith("config") for t in tags["tensors"])  # the config, as text


def test_wandb_failures_are_one_line_and_stop_the_run_unless_told_otherwise(tmp_path, monkeypatch,
                                                                            caplog):
  cfg = get_config()
  assert open_wandb(cfg, tmp_path) is None  # off by default
  cfg.logging.wandb_project = "wan-jax-test"
  monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
  with pytest.raises(WandbUnavailable) as e:
    open_wandb(cfg, tmp_path)
  assert "wandb package is not installed" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(WandbUnavailable):  # before anything is written or loaded
    check_run_config(cfg)
  monkeypatch.undo()

  import wandb

  def no_login(**kwargs):
    raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.\nDetails")
  monkeypatch.setattr(wandb, "init", no_login)
  with pytest.raises(WandbUnavailable) as e:
    open_wandb(cfg, tmp_path)
  assert str(e.value) == (
      "W&B could not start a run in project 'wan-jax-test': No API key configured. Use `wandb "
      "login` to log in. (log in with `wandb login`, or set WANDB_MODE=offline to log without a "
      "network)")
  cfg.logging.wandb_required = False
  assert open_wandb(cfg, tmp_path) is None
  assert "training goes on without W&B" in caplog.text
  assert not (tmp_path / "wandb_run_id").exists()


def test_a_new_tracker_is_one_entry_and_gets_every_row_preview_and_the_config(tmp_path,
                                                                              monkeypatch):
  """Trackers speak to each destination through one interface (metrics.jsonl first)."""
  import json

  from wan_jax.train.outputs import trackers

  seen: list[tuple] = []

  class Recorder:
    def row(self, step, row, scalars):
      seen.append(("row", step, row["loss"], scalars.get("loss/high_noise")))

    def media(self, step, tag, path, caption=""):
      seen.append(("media", step, tag, caption))

    def text(self, step, tag, markdown):
      seen.append(("text", step, tag))

    def close(self, failed=False):
      seen.append(("close", failed))

  monkeypatch.setattr(trackers, "OPENERS", (*trackers.OPENERS, lambda cfg, workdir: Recorder()))
  t = Trackers(get_config(), tmp_path)
  t.log(1, ROWS[0])
  t.previews(1, [write_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "previews/step_000001_0.png")],
             ["a ball"])
  t.close(failed=True)
  assert seen == [("text", 1, "config"), ("row", 1, 0.4, 0.4),
                  ("media", 1, "preview/0", "a ball"), ("close", True)]
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows == [ROWS[0]]  # metrics.jsonl is a tracker too: the row as logged

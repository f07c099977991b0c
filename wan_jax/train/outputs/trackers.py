"""What the dashboards show: each metrics row as per-expert scalars, the previews and the config,
sent to TensorBoard (always) and W&B (when logging.wandb_project is set).

The two experts see different noise levels, so their losses differ in scale: each expert has its
own curves (`loss/high_noise`, `loss/low_noise`, their moving averages `loss_avg/...`, and `lr/`,
`grad_norm/`, `timestep/` per expert); step time, tokens/s and the count of skipped steps are
shared. The moving average is the mean of the expert's last AVERAGE_WINDOW applied steps; a
resumed run starts it from the rows metrics.jsonl already holds, so its curves continue.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from wan_jax.train.outputs.tensorboard_log import TensorBoardLog
from wan_jax.train.outputs.wandb_log import open_wandb
from wan_jax.train.step.experts import CHECKPOINT_NAMES

AVERAGE_WINDOW = 20  # as the run summary's final loss


def expert_label(expert: str) -> str:
  """"high" -> "high_noise" (the name in files and tags); other names pass through."""
  return CHECKPOINT_NAMES.get(expert, expert)


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per step, the last one written (a resumed run writes steps again), by step."""
  by_step = {r["step"]: r for r in rows if isinstance(r.get("step"), int)}
  return [by_step[s] for s in sorted(by_step)]


def applied(row: dict[str, Any]) -> bool:
  """A step whose update was applied: not skipped and with a finite loss."""
  loss = row.get("loss")
  return (not row.get("skipped", False) and isinstance(loss, (int, float))
          and math.isfinite(loss))


class ExpertScalars:
  """Turns metrics rows into the scalars the dashboards plot, keeping the moving averages."""

  def __init__(self, window: int = AVERAGE_WINDOW):
    self._recent: dict[str, collections.deque] = collections.defaultdict(
        lambda: collections.deque(maxlen=window))
    self.skipped = 0

  def __call__(self, row: dict[str, Any]) -> dict[str, float]:
    name = expert_label(str(row.get("expert", "all")))
    out: dict[str, float] = {}
    if applied(row):
      self._recent[name].append(float(row["loss"]))
      out[f"loss/{name}"] = float(row["loss"])
      out[f"loss_avg/{name}"] = sum(self._recent[name]) / len(self._recent[name])
    else:
      self.skipped += 1
    for key, tag in (("lr", "lr"), ("grad_norm", "grad_norm"), ("t_mean", "timestep")):
      value = row.get(key)
      if isinstance(value, (int, float)) and math.isfinite(value):
        out[f"{tag}/{name}"] = float(value)
    for key, tag in (("step_time", "speed/step_time_s"), ("tokens_per_s", "speed/tokens_per_s")):
      value = row.get(key)
      if isinstance(value, (int, float)) and math.isfinite(value):
        out[tag] = float(value)
    out["train/skipped_steps"] = float(self.skipped)
    return out


def preview_tag(path: Path) -> str:
  """previews/step_000250_0.mp4 -> "preview/0": one series per prompt across steps."""
  return "preview/" + re.sub(r"^step_\d+_", "", Path(path).stem)


class Trackers:
  """TensorBoard under <workdir>/tensorboard and, if configured, a W&B run (process 0 only).

  `earlier_rows` returns the metrics rows already written (metrics.jsonl): at the first row the
  averages and the skipped count start from those of earlier steps.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path,
               earlier_rows: Callable[[], list[dict[str, Any]]]):
    self.cfg = cfg
    self.tensorboard = TensorBoardLog(Path(workdir) / "tensorboard")
    self.wandb = open_wandb(cfg, Path(workdir))
    self._earlier_rows = earlier_rows
    self._scalars: ExpertScalars | None = None

  def _start(self, step: int) -> ExpertScalars:
    if self._scalars is None:
      self._scalars = ExpertScalars()
      for row in latest_rows(self._earlier_rows()):
        if row["step"] < step:
          self._scalars(row)
      self.tensorboard.text(step, "config", config_markdown(self.cfg))
    return self._scalars

  def log(self, step: int, row: dict[str, Any]) -> None:
    values = self._start(step)(row)
    self.tensorboard.scalars(step, values)
    if self.wandb is not None:
      self.wandb.scalars(step, values)

  def previews(self, step: int, paths: Sequence[Path], prompts: Sequence[str] = ()) -> None:
    self._start(step)
    for i, path in enumerate(paths):
      tag = preview_tag(path)
      self.tensorboard.media(step, tag, path)
      if self.wandb is not None:
        self.wandb.media(step, tag, path, prompts[i] if i < len(prompts) else "")

  def close(self, failed: bool = False) -> None:
    try:
      self.tensorboard.close()
    finally:
      if self.wandb is not None:
        self.wandb.close(failed)
        self.wandb = None


def config_markdown(cfg: ml_collections.ConfigDict) -> str:
  """The config as JSON in a markdown code block (TensorBoard's text tab renders markdown)."""
  return "    " + json.dumps(json.loads(cfg.to_json()), indent=2).replace("\n", "\n    ")

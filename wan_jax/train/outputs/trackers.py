"""Where a run's metrics, previews and config go: every destination is a `Tracker`, opened by
one entry of OPENERS: metrics.jsonl (the rows as written), TensorBoard (always) and W&B (when
logging.wandb_project is set). A new tracker is one file with the four methods and one entry.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections

from wan_jax.train.outputs.metrics_log import MetricsLog
from wan_jax.train.outputs.tensorboard_log import TensorBoardLog
from wan_jax.train.outputs.wandb_log import open_wandb
from wan_jax.variants import TWO_EXPERTS, get_variant

AVERAGE_WINDOW = 20  # as the run summary's final loss


def expert_label(expert: str, names: Mapping[str, str] = TWO_EXPERTS) -> str:
  """"high" -> "high_noise" (the name in files and tags; the model's `names`, e.g. "transformer"
  for a one-model release); other names pass through."""
  return names.get(expert, expert)


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

  def __init__(self, window: int = AVERAGE_WINDOW, names: Mapping[str, str] = TWO_EXPERTS):
    self.names = names
    self._recent: dict[str, collections.deque] = collections.defaultdict(
        lambda: collections.deque(maxlen=window))
    self.skipped = 0

  def __call__(self, row: dict[str, Any]) -> dict[str, float]:
    name = expert_label(str(row.get("expert", "all")), self.names)
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


class Tracker(Protocol):
  """One destination of what a run reports."""

  def row(self, step: int, row: dict[str, Any], scalars: dict[str, float]) -> None:
    """A metrics row as logged, and the per-expert scalars the dashboards plot from it."""

  def media(self, step: int, tag: str, path: Path, caption: str = "") -> None:
    """A preview file (MP4, or PNG for one frame)."""

  def text(self, step: int, tag: str, markdown: str) -> None:
    """Text once per run (the config)."""

  def close(self, failed: bool = False) -> None:
    """Flushes and closes; `failed`: the run ends with an error."""


# (cfg, workdir) -> a tracker, or None when not configured. Order: metrics.jsonl first, so a
# row is on disk before any dashboard sees it.
OPENERS: tuple[Callable[[ml_collections.ConfigDict, Path], Tracker | None], ...] = (
    lambda cfg, workdir: MetricsLog(workdir / "metrics.jsonl"),
    lambda cfg, workdir: TensorBoardLog(workdir / "tensorboard"),
    open_wandb,
)


class Trackers:
  """Every configured tracker (process 0 only), fed through one interface.

  At the first row the moving averages and the skipped count start from the rows metrics.jsonl
  already holds (`earlier_rows`, default: that file's rows), so a resumed run's curves continue.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path,
               earlier_rows: Callable[[], list[dict[str, Any]]] | None = None):
    self.cfg = cfg
    self.trackers: list[Tracker] = []
    try:
      for opener in OPENERS:
        tracker = opener(cfg, Path(workdir))
        if tracker is not None:
          self.trackers.append(tracker)
    except BaseException:
      self.close(failed=True)
      raise
    self.metrics = next(t for t in self.trackers if isinstance(t, MetricsLog))
    self._earlier_rows = earlier_rows or self.metrics.rows
    self._scalars: ExpertScalars | None = None

  def _start(self, step: int) -> ExpertScalars:
    if self._scalars is None:
      self._scalars = ExpertScalars(names=get_variant(self.cfg.model.arch).experts)
      for row in latest_rows(self._earlier_rows()):
        if row["step"] < step:
          self._scalars(row)
      for tracker in self.trackers:
        tracker.text(step, "config", config_markdown(self.cfg))
    return self._scalars

  def log(self, step: int, row: dict[str, Any]) -> None:
    """metrics.jsonl first: the row is on disk (or the disk's error raised) before the earlier
    rows are read back for the averages and before any dashboard sees it."""
    self.metrics.row(step, row, {})
    scalars = self._start(step)(row)
    for tracker in self.trackers:
      if tracker is not self.metrics:
        tracker.row(step, row, scalars)

  def previews(self, step: int, paths: Sequence[Path], prompts: Sequence[str] = ()) -> None:
    self._start(step)
    for i, path in enumerate(paths):
      for tracker in self.trackers:
        tracker.media(step, preview_tag(path), path, prompts[i] if i < len(prompts) else "")

  def close(self, failed: bool = False) -> None:
    """Closes every tracker, each even if another fails (the first error is raised)."""
    errors = []
    for tracker in self.trackers:
      try:
        tracker.close(failed)
      except Exception as e:  # noqa: BLE001 - collected, the first re-raised below
        errors.append(e)
    self.trackers = []
    if errors:
      raise errors[0]


def config_markdown(cfg: ml_collections.ConfigDict) -> str:
  """The config as JSON in a markdown code block (TensorBoard's text tab renders markdown)."""
  return "    " + json.dumps(json.loads(cfg.to_json()), indent=2).replace("\n", "\n    ")

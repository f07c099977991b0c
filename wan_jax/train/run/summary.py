"""What a run reports at its end (and carries across resumes in its checkpoints' metadata)."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from wan_jax.data.pipeline import FORMS, Pipeline

log = logging.getLogger(__name__)
RECENT = 20  # steps the final loss averages


class TrainingStalled(ValueError):
  """Every step of a window was skipped: training would spin without learning."""


@dataclasses.dataclass
class RunSummary:
  steps: int = 0
  resumed_from: int | None = None
  skipped_steps: int = 0
  substituted_rows: int = 0  # a broken item replaced mid-run by another of its bucket
  skipped_rows: int = 0  # nothing in the bucket could be read: the row trained with zero weight
  # Image-to-video: rows by how they trained (a clip on its first frame, a still image with an
  # empty condition, on a degraded copy, as a static clip); this process's rows.
  rows_by_form: dict[str, int] = dataclasses.field(default_factory=dict)
  count_forms: bool = False
  files: list[str] = dataclasses.field(default_factory=list)
  final_loss: float = math.nan
  recent: list[float] = dataclasses.field(default_factory=list)  # the last applied steps' losses
  skipped_in_a_row: int = 0

  def record(self, done: int, loss: float, finite: bool, stall_limit: int) -> None:
    """Counts step `done` (1-based); a run whose last `stall_limit` steps were all skipped stops
    with TrainingStalled (0: never)."""
    if finite:
      self.skipped_in_a_row = 0
      self.recent = (self.recent + [loss])[-RECENT:]
      self.final_loss = float(np.mean(self.recent))
      return
    self.skipped_steps += 1
    self.skipped_in_a_row += 1
    log.warning("step %d: non-finite loss, gradients or updated weights; update skipped", done)
    if stall_limit and self.skipped_in_a_row >= stall_limit:
      raise TrainingStalled(
          f"steps {done - stall_limit + 1}-{done} were all skipped (non-finite loss, gradients "
          f"or updated weights): stopping. The weights are those of the last applied step (the "
          f"latest checkpoint holds them); lower train.learning_rate, check the data, or raise "
          f"train.max_skipped_in_a_row")

  def count_rows(self, batch: dict[str, np.ndarray]) -> None:
    self.substituted_rows += int(np.sum(batch["substituted"] & batch["valid"]))
    self.skipped_rows += int(np.sum(~batch["valid"]))
    if self.count_forms:
      for form in batch["form"][batch["valid"]]:
        self.rows_by_form[form] = self.rows_by_form.get(form, 0) + 1

  def counters(self) -> dict[str, Any]:
    """The counts a checkpoint keeps, so a resumed run reports the whole run."""
    return {"skipped_steps": self.skipped_steps, "skipped_rows": self.skipped_rows,
            "substituted_rows": self.substituted_rows, "rows_by_form": dict(self.rows_by_form)}

  def resume(self, meta: dict[str, Any]) -> int:
    """Takes the counts back from a checkpoint's metadata; returns its step."""
    self.resumed_from = int(meta["step"])
    self.skipped_steps = int(meta["skipped_steps"])
    self.skipped_rows = int(meta.get("skipped_rows", 0))
    self.substituted_rows = int(meta.get("substituted_rows", 0))
    self.rows_by_form = {str(k): int(v) for k, v in meta.get("rows_by_form", {}).items()}
    return self.resumed_from

  def text(self, pipeline: Pipeline | None) -> str:
    lines = [f"trained {self.steps} steps" + (f" (resumed from step {self.resumed_from})"
                                               if self.resumed_from else ""),
             f"  steps skipped (non-finite loss or gradients): {self.skipped_steps}",
             f"  batch rows replaced mid-run (item unreadable): {self.substituted_rows}; rows "
             f"with nothing readable (zero weight): {self.skipped_rows}",
             *([f"  image-to-video rows by how they trained: {self.forms_text()}"]
               if self.count_forms else []),
             "  final loss (mean of the last steps): " + (
                 f"{self.final_loss:.5f}" if math.isfinite(self.final_loss) else "n/a")]
    if pipeline is not None:
      lines.append("  data: " + pipeline.report.summary().replace("\n", "\n  "))
      damaged = _damaged_mid_run(pipeline)
      if damaged:
        lines.append(f"  cache files found damaged mid-run: {damaged} (removed; the rows that "
                     "needed them were replaced by others of their bucket in this run; the next "
                     "run re-encodes them)")
    lines += ["  files written:"] + [f"    {f}" for f in self.files]
    return "\n".join(lines)


  def forms_text(self) -> str:
    """'12 clip, 30 image, 8 image on a degraded copy' (rows of this process, in that order)."""
    known = [f for f in FORMS if f in self.rows_by_form]
    rest = sorted(set(self.rows_by_form) - set(FORMS))
    return ", ".join(f"{self.rows_by_form[f]} {f}" for f in known + rest) or "none yet"


def _damaged_mid_run(pipeline: Pipeline) -> int:
  """Cache files the run started with (its caches were complete) that are gone now: a read
  found them damaged and removed them (cache_store.py)."""
  plan = pipeline.cache_plan
  return 0 if plan is None else sum(len(missing) for missing in plan.missing())

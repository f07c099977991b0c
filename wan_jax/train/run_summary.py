"""What a run reports at its end (and carries across resumes in its checkpoints' metadata)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from wan_jax.data.pipeline import Pipeline


@dataclasses.dataclass
class RunSummary:
  steps: int = 0
  resumed_from: int | None = None
  skipped_steps: int = 0
  substituted_rows: int = 0  # a broken item replaced mid-run by another of its bucket
  skipped_rows: int = 0  # nothing in the bucket could be read: the row trained with zero weight
  files: list[str] = dataclasses.field(default_factory=list)
  final_loss: float = math.nan

  def count_rows(self, batch: dict[str, np.ndarray]) -> None:
    self.substituted_rows += int(np.sum(batch["substituted"] & batch["valid"]))
    self.skipped_rows += int(np.sum(~batch["valid"]))

  def counters(self) -> dict[str, int]:
    """The counts a checkpoint keeps, so a resumed run reports the whole run."""
    return {"skipped_steps": self.skipped_steps, "skipped_rows": self.skipped_rows,
            "substituted_rows": self.substituted_rows}

  def resume(self, meta: dict[str, Any]) -> int:
    """Takes the counts back from a checkpoint's metadata; returns its step."""
    self.resumed_from = int(meta["step"])
    self.skipped_steps = int(meta["skipped_steps"])
    self.skipped_rows = int(meta.get("skipped_rows", 0))
    self.substituted_rows = int(meta.get("substituted_rows", 0))
    return self.resumed_from

  def text(self, pipeline: Pipeline | None) -> str:
    lines = [f"trained {self.steps} steps" + (f" (resumed from step {self.resumed_from})"
                                               if self.resumed_from else ""),
             f"  steps skipped (non-finite loss or gradients): {self.skipped_steps}",
             f"  batch rows replaced mid-run (item unreadable): {self.substituted_rows}; rows "
             f"with nothing readable (zero weight): {self.skipped_rows}",
             "  final loss (mean of the last steps): " + (
                 f"{self.final_loss:.5f}" if math.isfinite(self.final_loss) else "n/a")]
    if pipeline is not None:
      lines.append("  data: " + pipeline.report.summary().replace("\n", "\n  "))
    lines += ["  files written:"] + [f"    {f}" for f in self.files]
    return "\n".join(lines)

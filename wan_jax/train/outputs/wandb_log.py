"""Weights & Biases, optional: the run's scalars, previews and config in a W&B run.

Off unless `logging.wandb_project` is set. The run is named after `save.name`, its files go
under <workdir>/wandb/, and its id is kept in <workdir>/wandb_run_id so a resumed training run
continues the same W&B run. `WANDB_MODE=offline` logs without a network (`wandb sync` uploads
later). Every value is logged against the training step (`step`, W&B's x-axis for all charts):
a run resumed from an earlier checkpoint logs some steps again, which W&B's own step counter
would refuse.

When W&B cannot be used (the package is missing, no login, the server refuses) the error is one
line. `logging.wandb_required` (default True) decides what happens then: True stops the run
before it trains, False warns and trains without W&B. A run that asked for W&B should not
silently train for days without the dashboard its user watches, hence the default.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from wan_jax.files import atomic_path

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
STEP_KEY = "step"


class WandbUnavailable(ValueError):
  """W&B was asked for (logging.wandb_project) and cannot be used."""


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def _import_wandb():
  try:
    import wandb
  except ImportError:
    raise WandbUnavailable(
        "logging.wandb_project is set but the wandb package is not installed: pip install "
        "'wan-jax[wandb]' (or wandb), or set logging.wandb_project='' to train without "
        "W&B") from None
  return wandb


def check_available(cfg: ml_collections.ConfigDict) -> None:
  """Raises WandbUnavailable when W&B is asked for and required but not installed (a cheap
  check to run before anything big loads; a failed login shows only when the run opens)."""
  settings = cfg.get("logging")
  if settings is not None and settings.get("wandb_project") and settings.get("wandb_required",
                                                                            True):
    _import_wandb()


class WandbLog:
  """One W&B run for the training run in `workdir`."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path):
    wandb = _import_wandb()
    self._wandb = wandb
    settings = cfg.logging
    id_file = Path(workdir) / RUN_ID_FILE
    run_id = (id_file.read_text().strip() if id_file.is_file() else "") or None  # None: new
    config = json.loads(cfg.to_json())
    try:
      self.run = wandb.init(project=str(settings.wandb_project),
                            entity=str(settings.get("wandb_entity", "")) or None,
                            name=str(cfg.save.name), id=run_id, resume="allow", dir=str(workdir))
      self.run.config.update(config, allow_val_change=True)  # a resume may change train.steps
    except Exception as e:  # noqa: BLE001 - wandb raises its own kinds, each one line here
      raise WandbUnavailable(
          f"W&B could not {'resume run ' + run_id if run_id else 'start a run'} in project {settings.wandb_project!r}: "
          f"{_one_line(e)} (log in with `wandb login`, or set WANDB_MODE=offline to log "
          f"without a network)") from None
    with atomic_path(id_file) as tmp:
      tmp.write_text(self.run.id + "\n")
    self.run.define_metric(STEP_KEY)
    self.run.define_metric("*", step_metric=STEP_KEY)

  @property
  def id(self) -> str:
    return self.run.id

  def row(self, step: int, row: dict[str, Any], scalars: dict[str, float]) -> None:
    self.scalars(step, scalars)

  def text(self, step: int, tag: str, markdown: str) -> None:
    pass  # the config is the W&B run's own config (set at start)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self.run.log({**values, STEP_KEY: step})

  def media(self, step: int, tag: str, path: Path, caption: str = "") -> None:
    """A preview file: a video (the MP4 as written) or, for one frame, an image."""
    wandb, path = self._wandb, Path(path)
    kind = wandb.Image if path.suffix.lower() in (".png", ".jpg", ".jpeg") else wandb.Video
    self.run.log({tag: kind(str(path), caption=caption or None), STEP_KEY: step})

  def close(self, failed: bool = False) -> None:
    self.run.finish(exit_code=1 if failed else 0)


def open_wandb(cfg: ml_collections.ConfigDict, workdir: Path) -> WandbLog | None:
  """The W&B run, None when not asked for; a failure raises or warns by logging.wandb_required."""
  settings: Any = cfg.get("logging")
  if settings is None or not settings.get("wandb_project"):
    return None
  try:
    return WandbLog(cfg, workdir)
  except WandbUnavailable as e:
    if settings.get("wandb_required", True):
      raise
    log.warning("%s; training goes on without W&B (logging.wandb_required=False)", e)
    return None

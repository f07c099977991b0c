"""Everything a run prepares before its first step, in the order that fails cheapest first:
checks, demo data, the resume check, caches, the outputs (metrics, TensorBoard, W&B), the memory
plan and compiled step, then the experts' weights and a restored checkpoint. What the loop in
trainer.py then reads."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_collections

from wan_jax.data.pipeline import Pipeline
from wan_jax.files import atomic_path, writing
from wan_jax.tasks import Task
from wan_jax.tasks.i2v_images import image_training
from wan_jax.train.run import loading
from wan_jax.train.run.checkpointing import Checkpoints
from wan_jax.train.run.data_setup import build_data, prepare_datasets
from wan_jax.train.run.expert_states import Experts
from wan_jax.train.run.planned_step import PlannedStep, plan_train_step
from wan_jax.train.run.resume import check_resume, restore
from wan_jax.train.run.summary import RunSummary
from wan_jax.train.run.validate import check_preview_images
from wan_jax.train.run.writer import Outputs, exports_weight_files
from wan_jax.train.step.expert_schedule import HIGH, LOW, batches_per_expert
from wan_jax.train.step.mesh import make_mesh
from wan_jax.train.step.optimizer import make_optimizer
from wan_jax.train.step.train_step import StepSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  cfg: ml_collections.ConfigDict
  workdir: Path
  task: Task
  names: tuple[str, ...]  # the trained experts
  mesh: jax.sharding.Mesh
  enc: loading.Encoders | None
  pipeline: Pipeline | None
  summary: RunSummary
  ckpt: Checkpoints | None = None  # None: --cache_only stops after the caches
  horizon: int = 0  # optimizer steps an expert's schedule spans
  planned: PlannedStep | None = None
  experts: Experts | None = None
  iterator: Iterator[dict[str, Any]] | None = None
  start: int = 0  # the first step to run (a resumed run's checkpoint step)
  outputs: Outputs | None = None  # opened before the weights load: a W&B refusal costs nothing
  finished: int | None = None  # the workdir's run is done: the step of its final checkpoint

  def close(self) -> None:
    """Closes the outputs and the checkpoints on a failure (the first error is the one to
    report: a failure to close is a warning)."""
    for part in (self.ckpt, self.outputs):
      if part is None:
        continue
      try:
        part.close()
      except Exception as e:  # e.g. the disk is still full
        log.warning("while stopping: %s", e)


def set_up(cfg: ml_collections.ConfigDict, workdir: Path, cache_only: bool,
           progress: bool) -> Run:
  loading.check_arch(cfg)
  loading.check_checkpoint_task(cfg)
  task = loading.task(cfg)
  names = loading.trained_experts(cfg)
  if not exports_weight_files(cfg, jax.process_count()):
    log.warning("a full fine-tune on %d processes writes no weight files (save.every and the "
                "final export are skipped: each expert is too big to gather onto one host); its "
                "weights are in the Orbax checkpoints under %s", jax.process_count(),
                workdir / "checkpoints")
  idle = [n for n, count in batches_per_expert(int(cfg.train.steps), HIGH in names, LOW in names,
                                                int(cfg.train.switch_boundary_every)).items()
          if n in names and count == 0]
  if idle:  # e.g. steps 5 with switch_boundary_every 10: the low-noise expert never gets a turn
    log.warning("train.steps=%d with train.switch_boundary_every=%d gives the %s-noise expert no "
                "steps: it stays as released and no file is exported for it; lower "
                "switch_boundary_every, or set model.train_%s_noise=False", int(cfg.train.steps),
                int(cfg.train.switch_boundary_every), idle[0], idle[0])
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  with writing(f"the generated demo data under {workdir / 'demo_data'}"):
    cfg = prepare_datasets(cfg, workdir)  # the demo's folders are part of what a resume checks
  check_preview_images(cfg, task)
  image_training(cfg, bool(task.pixel_arrays))  # its settings refused here, before anything loads
  run = Run(cfg, workdir, task, names, mesh, None, None,
            RunSummary(count_forms=bool(task.pixel_arrays)))
  try:
    # A run to resume: the newest checkpoint whose metadata reads is checked before the caches
    # build, so a mismatched resume is refused before anything big loads (its arrays are verified
    # when restored; a damaged one falls back to the previous). A new run opens its checkpoint
    # folder only once the data is ready: a wrong data folder leaves no empty checkpoints/.
    if not cache_only and (workdir / "checkpoints").is_dir():
      run.ckpt = _checkpoints(cfg, workdir)
    found = None if run.ckpt is None else run.ckpt.newest_meta()
    if found is not None:
      check_resume(found[1].get("settings"), cfg, int(found[1]["step"]), workdir)
      if int(found[1]["step"]) >= int(cfg.train.steps) and not cache_only:
        run.finished = int(found[1]["step"])  # done: nothing to train, export or render again
        run.summary.resume(found[1])
        return run
    run.enc = loading.encoders(cfg, workdir)
    with writing("the latent and prompt caches"):
      run.pipeline = build_data(cfg, workdir, run.enc, mesh, progress)
    print(f"data:\n  {run.pipeline.summary()}", flush=True)
    if cache_only:
      return run
    if run.ckpt is None:
      run.ckpt = _checkpoints(cfg, workdir)
    if jax.process_index() == 0:
      with writing(str(workdir / "config.json")), atomic_path(workdir / "config.json") as tmp:
        tmp.write_text(cfg.to_json(indent=2))
    run.outputs = Outputs(cfg, workdir, run.enc, run.pipeline, progress)
    _prepare_training(run, found, progress)
  except BaseException:  # close what was opened (Orbax's threads must not outlive the run)
    run.close()
    raise
  return run


def _checkpoints(cfg: ml_collections.ConfigDict, workdir: Path) -> Checkpoints:
  with writing(f"the checkpoint folder {workdir / 'checkpoints'}"):
    return Checkpoints(workdir / "checkpoints", cfg.checkpoint.every, cfg.checkpoint.keep,
                       cfg.checkpoint.async_save)


def _prepare_training(run: Run, found: tuple[int, dict] | None, progress: bool) -> None:
  """The plan and compiled step, then the experts' weights and a restored checkpoint."""
  cfg, names, mesh, workdir = run.cfg, run.names, run.mesh, run.workdir
  # One optimizer definition serves both experts (one compiled step); each expert has its own
  # state. Its schedule spans the batches an expert gets (they differ by at most one switch).
  run.horizon = max(batches_per_expert(int(cfg.train.steps), HIGH in names, LOW in names,
                                       int(cfg.train.switch_boundary_every)).values())
  tx = make_optimizer(cfg.train, run.horizon)
  settings = StepSettings.from_config(cfg.train, run.enc.vae_config, run.task)
  # Before any big weights load: how the run fits the device, and its compiled step.
  run.planned = plan_train_step(cfg, names, tx, settings, mesh, run.pipeline, run.enc.text_len,
                                progress)
  print(run.planned.plan.line(), flush=True)
  chosen = run.planned.plan.chosen
  run.experts = Experts(cfg, names, tx, mesh, chosen.remat, chosen.offload_expert, chosen.stream)
  run.iterator = iter(run.pipeline.dataset)
  if found is not None:
    run.start = run.summary.resume(restore(run.ckpt, run.experts, run.iterator, cfg, workdir))
    print(f"resuming from {workdir / 'checkpoints'} at step {run.start}", flush=True)

"""The training run: caches -> experts (+LoRA) -> sharded steps -> checkpoints, files, previews.

`train(cfg, workdir)` is everything `launch.py` does after parsing flags. A workdir that already
holds checkpoints resumes from the newest intact one: same weights, optimizer state, step,
expert schedule and data position, so the losses continue exactly as without the interruption.

This file is the loop, read top to bottom; the parts live beside it: run_data.py (data and
caches), expert_states.py (each expert's state and placement), resume.py, outputs.py (metrics,
LoRA files, previews, plot), run_summary.py. Workdir layout: checkpoints/ (Orbax), lora/,
previews/, metrics.jsonl, tensorboard/, loss.png, config.json (docs/training.md).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from wan_jax.files import atomic_path, writing
from wan_jax.model.flow_matching import expert_range
from wan_jax.train import models
from wan_jax.train.checkpointing import Checkpoints
from wan_jax.train.expert_states import Experts
from wan_jax.train.experts import HIGH, LOW, active_expert, batches_per_expert
from wan_jax.train.mesh import make_mesh
from wan_jax.train.optimizer import learning_rate, make_optimizer
from wan_jax.train.outputs import Outputs
from wan_jax.train.planned_step import plan_train_step
from wan_jax.train.resume import check_resume, restore, resume_settings
from wan_jax.train.run_data import build_data, global_batch, prepare_datasets
from wan_jax.train.run_summary import RunSummary
from wan_jax.train.step import StepSettings, step_keys
from wan_jax.train.validate import check_preview_images, check_run_config
from wan_jax.train.workdir_lock import workdir_lock

log = logging.getLogger(__name__)


class TrainingStalled(ValueError):
  """Every step of a window was skipped: training would spin without learning."""


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, cache_only: bool = False,
          progress: bool = True) -> RunSummary:
  """Trains (or resumes) the run in `workdir`, holding the workdir's lock throughout."""
  check_run_config(cfg)  # before anything is written or loaded
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _train(cfg, workdir, cache_only, progress)


def _train(cfg: ml_collections.ConfigDict, workdir: Path, cache_only: bool,
           progress: bool) -> RunSummary:
  models.check_arch(cfg)
  models.check_checkpoint_task(cfg)
  task = models.task(cfg)
  names = models.trained_experts(cfg)
  if jax.process_count() > 1 and not cfg.lora.enabled and cfg.save.every:
    raise ValueError("exporting a full fine-tune from a multi-host run is not supported yet: set "
                     "save.every=0 and export from the Orbax checkpoint on one host")
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  with writing(f"the generated demo data under {workdir / 'demo_data'}"):
    prepare_datasets(cfg, workdir)  # the demo's generated folders are part of what a resume checks
  check_preview_images(cfg, task)
  with writing(f"the checkpoint folder {workdir / 'checkpoints'}"):
    ckpt = None if cache_only else Checkpoints(workdir / "checkpoints", cfg.checkpoint.every,
                                               cfg.checkpoint.keep, cfg.checkpoint.async_save)
  # The newest checkpoint whose metadata reads: a mismatched resume is refused before anything
  # big loads. Its arrays are verified when restored; a damaged one falls back to the previous.
  found = None if ckpt is None else ckpt.newest_meta()
  if found is not None:
    check_resume(found[1].get("settings"), cfg, int(found[1]["step"]), workdir)
  enc = models.encoders(cfg, workdir)
  with writing("the latent and prompt caches"):
    pipeline = build_data(cfg, workdir, enc, mesh, progress)
  print(f"data:\n  {pipeline.summary()}", flush=True)
  summary = RunSummary()
  if cache_only:
    print(f"caches are complete under {pipeline.cache_plan.store.root}", flush=True)
    return summary
  if jax.process_index() == 0:
    with writing(str(workdir / "config.json")), atomic_path(workdir / "config.json") as tmp:
      tmp.write_text(cfg.to_json(indent=2))

  # One optimizer definition serves both experts (one compiled step); each expert has its own
  # state. Its schedule spans the batches an expert gets (they differ by at most one switch).
  steps, every = int(cfg.train.steps), int(cfg.train.switch_boundary_every)
  horizon = max(batches_per_expert(steps, HIGH in names, LOW in names, every).values())
  tx = make_optimizer(cfg.train, horizon)
  vae = enc.vae_config
  settings = StepSettings(cfg.train.timestep_sampling, float(cfg.train.shift),
                          float(cfg.train.logit_mean), float(cfg.train.logit_std),
                          bool(cfg.train.sample_posterior), tuple(vae.latents_mean),
                          tuple(vae.latents_std), task)
  # Before any big weights load: how the run fits the device, and its compiled step.
  planned = plan_train_step(cfg, names, tx, settings, mesh, pipeline, enc.text_len, progress)
  print(planned.plan.line(), flush=True)
  experts = Experts(cfg, names, tx, mesh, planned.plan.chosen.remat,
                    planned.plan.chosen.offload_expert)
  iterator = iter(pipeline.dataset)
  start = 0
  if found is not None:
    meta = restore(ckpt, experts, iterator, cfg, workdir)
    start = summary.resume(meta)
    print(f"resuming from {workdir / 'checkpoints'} at step {start}", flush=True)

  outputs = Outputs(cfg, workdir, enc, pipeline)
  schedule = learning_rate(cfg.train, horizon)
  recent: list[float] = []
  skipped_in_a_row = 0
  bar = tqdm.tqdm(total=steps, initial=start, desc="training", unit="step",
                  disable=not progress or jax.process_index() != 0)

  def meta(step: int) -> dict:
    return {"step": step, "settings": resume_settings(cfg), "expert_steps": experts.steps(),
            "seed": int(cfg.seed), **summary.counters()}

  try:
    for step in range(start, steps):
      name = active_expert(step, HIGH in names, LOW in names, every)
      e = experts[name]
      experts.bring(name)  # with offloading, the idle expert waits in host memory
      batch = next(iterator)
      summary.count_rows(batch)
      t_low, t_high = expert_range(name, float(cfg.model.boundary))
      tic = time.perf_counter()
      inputs = global_batch(batch, mesh, task.batch_ndims)
      e.trainable, e.opt_state, m = planned.step(
          e.trainable, e.opt_state, e.frozen, inputs, step_keys(cfg.seed, step),
          jnp.float32(t_low), jnp.float32(t_high))
      loss, finite = float(m["loss"]), bool(m["finite"])  # waits for the step
      seconds = time.perf_counter() - tic
      if finite:
        e.steps += 1  # the optimizer's own count: a skipped step does not advance it
        skipped_in_a_row = 0
        recent = (recent + [loss])[-20:]
      else:
        summary.skipped_steps += 1
        skipped_in_a_row += 1
        log.warning("step %d: non-finite loss, gradients or updated weights; update skipped",
                    step + 1)
      lat = batch["latent_mean"].shape
      tokens = cfg.train.batch_size * lat[1] * (lat[2] // 2) * (lat[3] // 2)
      lr = float(schedule(max(0, (e.steps - 1) // int(cfg.train.grad_accum))))
      done = step + 1
      if done % int(cfg.train.log_every) == 0 or done == steps:
        outputs.log(done, {"loss": loss, "lr": lr, "grad_norm": float(m["grad_norm"]),
                           "step_time": seconds, "tokens_per_s": tokens / seconds,
                           "t_mean": float(m["t_mean"]), "expert": name, "skipped": not finite})
      bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", expert=name, s_step=f"{seconds:.2f}",
                      tok_s=f"{tokens / seconds:.0f}")
      bar.update(1)
      limit = int(cfg.train.max_skipped_in_a_row)
      if limit and skipped_in_a_row >= limit:
        raise TrainingStalled(
            f"steps {done - limit + 1}-{done} were all skipped (non-finite loss, gradients or "
            f"updated weights): stopping. The weights are those of the last applied step (the "
            f"latest checkpoint holds them); lower train.learning_rate, check the data, or raise "
            f"train.max_skipped_in_a_row")
      if done < steps:
        ckpt.save(done, experts.tree(), meta(done), iterator)
        if cfg.save.every and done % int(cfg.save.every) == 0:
          summary.files += map(str, outputs.weights(experts, done))
        if cfg.preview.every and done % int(cfg.preview.every) == 0:
          summary.files += map(str, outputs.previews(experts, done))
    bar.close()
    if start < steps or ckpt.latest() != steps:
      ckpt.save(steps, experts.tree(), meta(steps), iterator, force=True)
    ckpt.wait()
    summary.steps = steps
    summary.final_loss = float(np.mean(recent)) if recent else math.nan
    summary.files += map(str, outputs.weights(experts, None))
    if cfg.preview.every:
      summary.files += map(str, outputs.previews(experts, steps))
    plot = outputs.plot()
    if plot is not None:
      summary.files.append(str(plot))
    summary.files.append(str(workdir / "checkpoints" / str(steps)))
  except BaseException:  # the first error is the one to report; closing may fail the same way
    bar.close()
    for close in (ckpt.close, outputs.close):
      try:
        close()
      except Exception as e:  # e.g. the disk is still full
        log.warning("while stopping: %s", e)
    raise
  bar.close()
  with writing(f"the last checkpoint under {workdir / 'checkpoints'}"):
    ckpt.close()
  outputs.close()
  print(summary.text(pipeline), flush=True)
  return summary

"""The training run: caches -> experts (+LoRA) -> sharded steps -> checkpoints, files, previews.

`train(cfg, workdir)` is everything `launch.py` does after parsing flags. A workdir that already
holds checkpoints resumes from the newest intact one: same weights, optimizer state, step,
expert schedule and data position, so the losses continue exactly as without the interruption.

This file is the loop, read top to bottom; the parts live beside it: setup.py (everything
before the first step), data_setup.py (data and caches), expert_states.py (each expert's state and
placement), resume.py, writer.py (metrics, LoRA files, previews, plot), summary.py. The
task (text- or image-to-video, wan_jax/tasks) decides what a batch holds. Workdir layout:
checkpoints/ (Orbax), lora/ (or weights/), previews/, metrics.jsonl, tensorboard/, wandb/ (when
configured), loss.png, config.json (docs/training.md, "What a run writes").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from wan_jax.files import writing
from wan_jax.model.flow_matching import expert_range
from wan_jax.train.run import loading
from wan_jax.train.run.expert_states import ExpertState
from wan_jax.train.run.data_setup import global_batch
from wan_jax.train.run.resume import resume_settings
from wan_jax.train.run.setup import Run, set_up
from wan_jax.train.run.stop import Interrupted, StopRequest
from wan_jax.train.run.summary import RunSummary, TrainingStalled
from wan_jax.train.run.validate import check_run_config, check_workdir
from wan_jax.train.run.workdir_lock import workdir_lock
from wan_jax.train.step.expert_schedule import HIGH, LOW, active_expert
from wan_jax.train.step.optimizer import learning_rate
from wan_jax.train.step.train_step import step_keys

log = logging.getLogger(__name__)
__all__ = ["Interrupted", "TrainingStalled", "train"]


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, cache_only: bool = False,
          progress: bool = True) -> RunSummary:
  """Trains (or resumes) the run in `workdir`, holding the workdir's lock throughout.

  SIGTERM or Ctrl-C while it trains: the step in flight finishes, a checkpoint is saved, and
  `Interrupted` is raised (stop.py); the same call resumes.
  """
  check_run_config(cfg)  # before anything is written or loaded
  loading.check_arch(cfg)
  workdir = Path(workdir).absolute()
  check_workdir(workdir)
  with writing(f"the run folder {workdir}"):
    workdir.mkdir(parents=True, exist_ok=True)
  stop = StopRequest()
  with stop.installed(), workdir_lock(workdir, enabled=jax.process_index() == 0):
    run = set_up(cfg, workdir, cache_only, progress)
    if cache_only:
      print(f"caches are complete under {run.pipeline.cache_plan.store.root}", flush=True)
      return run.summary
    if run.finished is not None:
      return _already_done(run)
    return _loop(run, progress, stop)


@dataclasses.dataclass
class _Pending:
  """A step queued on the device whose metrics are not read yet."""

  done: int  # the step's number (1-based)
  name: str  # its expert
  expert: ExpertState
  metrics: dict[str, jax.Array]
  tokens: int
  queued: float  # perf_counter() when it was queued


def _already_done(run: Run) -> RunSummary:
  """A finished workdir run again: says so and writes nothing (raise train.steps to go on)."""
  run.close()
  run.summary.steps = run.finished
  print(f"the run in {run.workdir} is done: its checkpoint at step {run.finished} is the final "
        f"one (train.steps={int(run.cfg.train.steps)}); nothing was trained or written. Its "
        f"files are under {run.workdir}; raise train.steps to train further", flush=True)
  return run.summary


def _loop(run: Run, progress: bool, stop: StopRequest) -> RunSummary:
  cfg, experts, summary, ckpt, outputs = run.cfg, run.experts, run.summary, run.ckpt, run.outputs
  steps, every = int(cfg.train.steps), int(cfg.train.switch_boundary_every)
  schedule = learning_rate(cfg.train, run.horizon)
  bar = tqdm.tqdm(total=steps, initial=run.start, desc="training", unit="step",
                  disable=not progress or jax.process_index() != 0)

  def meta(step: int) -> dict:
    return {"step": step, "settings": resume_settings(cfg), "expert_steps": experts.steps(),
            "seed": int(cfg.seed), **summary.counters()}

  # A step's metrics are read one step late: the host queues step i+1 before it waits for step
  # i's loss, so the device never idles while the host logs. Before anything that needs them
  # (a checkpoint's counts, exported files, previews, the end) they are read at once.
  pending: _Pending | None = None
  last_read = time.perf_counter()  # when the last step's metrics were read

  def report(p: _Pending) -> None:
    nonlocal last_read
    loss, finite = float(p.metrics["loss"]), bool(p.metrics["finite"])  # waits for that step
    now = time.perf_counter()
    seconds, last_read = now - max(last_read, p.queued), now
    p.expert.steps += finite  # the optimizer's own count: a skipped step does not advance it
    lr = float(schedule(max(0, (p.expert.steps - 1) // int(cfg.train.grad_accum))))
    if p.done % int(cfg.train.log_every) == 0 or p.done == steps:
      outputs.log(p.done, {"loss": loss, "lr": lr, "grad_norm": float(p.metrics["grad_norm"]),
                           "step_time": seconds, "tokens_per_s": p.tokens / seconds,
                           "t_mean": float(p.metrics["t_mean"]), "expert": p.name,
                           "skipped": not finite})
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", expert=p.name, s_step=f"{seconds:.2f}",
                    tok_s=f"{p.tokens / seconds:.0f}")
    bar.update(1)
    summary.record(p.done, loss, finite, int(cfg.train.max_skipped_in_a_row))

  stop.deferring = True  # from here a signal lets the step in flight finish, then saves
  done = run.start
  try:
    for step in range(run.start, steps):
      if stop.requested():
        break
      name = active_expert(step, HIGH in run.names, LOW in run.names, every)
      e = experts[name]
      experts.bring(name)  # with offloading, the idle expert waits in host memory
      batch = next(run.iterator)
      summary.count_rows(batch)
      t_low, t_high = expert_range(name, float(cfg.model.boundary))
      queued = time.perf_counter()
      e.trainable, e.opt_state, m = run.planned.step(
          e.trainable, e.opt_state, e.frozen,
          global_batch(batch, run.mesh, run.task.batch_ndims), step_keys(cfg.seed, step),
          jnp.float32(t_low), jnp.float32(t_high))
      if pending is not None:
        report(pending)  # the step before, while this one runs
      done = step + 1
      lat = batch["latent_mean"].shape
      tokens = cfg.train.batch_size * lat[1] * (lat[2] // 2) * (lat[3] // 2)
      pending = _Pending(done, name, e, m, tokens, queued)
      saves = cfg.save.every and done % int(cfg.save.every) == 0
      previews = cfg.preview.every and done % int(cfg.preview.every) == 0
      if done < steps and (ckpt.due(done) or saves or previews):
        report(pending)
        pending = None
        ckpt.save(done, experts.tree(), meta(done), run.iterator)
        if saves:
          summary.files += map(str, outputs.weights(experts, done))
        if previews:
          summary.files += map(str, outputs.previews(experts, done))
    if pending is not None:
      report(pending)
      pending = None
    bar.close()
    if stop.signum is not None and done < steps:  # stopped on request: save, then say so
      if done > run.start and ckpt.latest() != done:
        ckpt.save(done, experts.tree(), meta(done), run.iterator, force=True)
      ckpt.wait()
      raise Interrupted(stop.signum, done, saved=ckpt.latest() == done)
    if run.start < steps or ckpt.latest() != steps:
      ckpt.save(steps, experts.tree(), meta(steps), run.iterator, force=True)
    ckpt.wait()
    summary.steps = steps
    summary.files += map(str, outputs.weights(experts, None))
    if cfg.preview.every:
      summary.files += map(str, outputs.previews(experts, steps))
    plot = outputs.plot()
    if plot is not None:
      summary.files.append(str(plot))
    summary.files.append(str(run.workdir / "checkpoints" / str(steps)))
  except BaseException:  # the first error is the one to report; closing may fail the same way
    bar.close()
    run.close()
    raise
  bar.close()
  with writing(f"the last checkpoint under {run.workdir / 'checkpoints'}"):
    ckpt.close()
  outputs.close()
  print(summary.text(run.pipeline), flush=True)
  return summary

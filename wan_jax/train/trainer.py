"""The training run: caches -> experts (+LoRA) -> sharded steps -> checkpoints, files, previews.

`train(cfg, workdir)` is everything `launch.py` does after parsing flags. A workdir that already
holds checkpoints resumes from the latest complete one: same weights, optimizer state, step,
expert schedule and data position, so the losses continue exactly as without the interruption.

Workdir layout: checkpoints/ (Orbax), lora/ (files for ComfyUI and diffusers), previews/,
metrics.jsonl, tensorboard/, loss.png, config.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from wan_jax.data.config import dataset_config, resolutions
from wan_jax.files import atomic_path, stray_temporaries, writing
from wan_jax.data.demo import make_clip_dataset, make_demo_dataset
from wan_jax.data.pipeline import Pipeline, build_pipeline
from wan_jax.model.dual import NUM_TRAIN_TIMESTEPS, DualWanTransformer
from wan_jax.train import models
from wan_jax.train.checkpointing import Checkpoints, abstract_like
from wan_jax.train.experts import (CHECKPOINT_NAMES, HIGH, LOW, active_expert,
                                   batches_per_expert)
from wan_jax.train.export import save_full, save_lora
from wan_jax.train.lora import FROZEN, LORA, add_lora
from wan_jax.train.mesh import make_mesh
from wan_jax.train.metrics_log import MetricsLog
from wan_jax.train.optimizer import learning_rate, make_optimizer
from wan_jax.train.plot import save_loss_plot
from wan_jax.train.preview import Guidance, render_previews
from wan_jax.train.sharding import global_batch_from_local, shard_state, tree_shardings
from wan_jax.train.planned_step import plan_train_step
from wan_jax.train.step import BATCH_NDIMS, StepSettings, step_keys
from wan_jax.train.tensorboard import ScalarWriter
from wan_jax.train.timesteps import expert_range
from wan_jax.train.validate import check_run_config
from wan_jax.train.workdir_lock import workdir_lock

log = logging.getLogger(__name__)
DEVICE, HOST = "device", "pinned_host"


class TrainingStalled(ValueError):
  """Every step of a window was skipped: training would spin without learning."""


@dataclasses.dataclass
class ExpertState:
  graphdef: nnx.GraphDef
  trainable: nnx.State
  frozen: nnx.State
  opt_state: Any
  steps: int = 0  # batches this expert has trained on


@dataclasses.dataclass
class RunSummary:
  steps: int = 0
  resumed_from: int | None = None
  skipped_steps: int = 0
  substituted_rows: int = 0  # a broken item replaced mid-run by another of its bucket
  skipped_rows: int = 0  # nothing in the bucket could be read: the row trained with zero weight
  files: list[str] = dataclasses.field(default_factory=list)
  final_loss: float = math.nan

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


RESUME_KEYS = ("seed", "model.arch", "model.name_or_path", "model.train_high_noise",
               "model.train_low_noise", "lora", "train.batch_size", "train.grad_accum",
               "train.switch_boundary_every", "datasets", "mesh")


def _plain(value: Any) -> Any:
  """A config value as JSON-comparable data (ConfigDicts and lists of them included)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  elif isinstance(value, (list, tuple)):
    value = [_plain(v) for v in value]
  return json.loads(json.dumps(value, default=str))


def resume_settings(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a checkpoint's state depends on: a resume with other values would silently continue
  a different run (another data order, LoRA shape or expert schedule), so it is refused."""
  out = {}
  for key in RESUME_KEYS:
    value = cfg
    for part in key.split("."):
      value = value[part]
    out[key] = _plain(value)
  return out


def _with_new_dataset_keys(saved: dict[str, Any]) -> dict[str, Any]:
  """Settings saved before a dataset key existed (e.g. trigger_word) compare as its default."""
  if not isinstance(saved.get("datasets"), list):
    return saved
  base = _plain(dataset_config())
  return {**saved, "datasets": [{**base, **d} if isinstance(d, dict) else d
                                for d in saved["datasets"]]}


def _check_resume(saved: dict[str, Any] | None, cfg, start: int, workdir: Path) -> None:
  steps = int(cfg.train.steps)
  if start > steps:
    raise ValueError(f"{workdir} holds a checkpoint at step {start}, past train.steps={steps}; "
                     "raise train.steps to continue, or use another --workdir")
  if saved is None:
    return
  now = resume_settings(cfg)
  saved = _with_new_dataset_keys(saved)
  changed = sorted(k for k in RESUME_KEYS if saved.get(k) != now[k])
  if changed:
    raise ValueError(f"{workdir} was trained with other settings for {', '.join(changed)}; "
                     "resuming would not continue the same run. Use another --workdir (or "
                     "restore those settings; train.steps, learning rate, previews and saving may "
                     "change between resumes)")


def prepare_datasets(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
  """The tiny demo trains on a generated data set unless a folder was given; random real-size
  models on generated clips at the data set's largest resolution and frame count."""
  if cfg.model.arch != "tiny" and not models.random_weights(cfg):
    return
  for ds in cfg.datasets:
    if ds.folder_path:
      continue
    if not models.random_weights(cfg):
      media, masks = make_demo_dataset(workdir / "demo_data")
    else:
      side = max(resolutions(ds))  # buckets are area-based: 16:9 clips of area side^2
      width, height = 16 * math.ceil(side * 4 / 3 / 16), 16 * math.ceil(side * 3 / 4 / 16)
      media, masks = make_clip_dataset(workdir / "demo_data", width, height, int(ds.num_frames))
    ds.folder_path, ds.mask_path = str(media), str(masks)


def build_data(cfg: ml_collections.ConfigDict, workdir: Path, enc: models.Encoders,
               mesh: jax.sharding.Mesh, progress: bool) -> Pipeline:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.train.batch_size % shards:
    raise ValueError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the mesh's "
                     f"data x fsdp = {shards}")
  extra = [*cfg.preview.prompts, cfg.preview.negative_prompt] if cfg.preview.every else []
  return build_pipeline(list(cfg.datasets), cfg.train.batch_size, cfg.seed,
                        num_workers=cfg.data.num_workers,
                        caches=models.cache_settings(cfg, enc), load_vae=enc.load_vae,
                        load_text=enc.load_text, extra_prompts=extra, progress=progress)


def _place(tree: Any, mesh, min_size: int, memory_kind: str) -> Any:
  """The tree on the mesh as the sharding rules say, in device or (pinned) host memory."""
  shardings = jax.tree.map(lambda s: s.with_memory_kind(memory_kind),
                           tree_shardings(tree, mesh, min_size=min_size))
  return shard_state(tree, shardings)


def _move(e: ExpertState, mesh, min_size: int, memory_kind: str) -> None:
  e.trainable, e.frozen, e.opt_state = (_place(t, mesh, min_size, memory_kind)
                                        for t in (e.trainable, e.frozen, e.opt_state))


def _expert_state(cfg, expert: str, tx, mesh, remat: str,
                  memory_kind: str = DEVICE) -> ExpertState:
  model = models.load_expert(cfg, expert, remat)
  if cfg.lora.enabled:
    add_lora(model, int(cfg.lora.rank), float(cfg.lora.alpha), list(cfg.lora.targets),
             seed=cfg.seed + (0 if expert == HIGH else 1))
    graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
  else:
    graphdef, trainable, frozen = nnx.split(model, nnx.Param, ...)
  del model
  min_size = int(cfg.mesh.min_shard_size)
  frozen = _place(frozen, mesh, min_size, memory_kind)  # the big part goes straight to its place
  trainable = _place(trainable, mesh, min_size, DEVICE)
  opt_shapes = jax.eval_shape(tx.init, trainable)
  opt_state = jax.jit(tx.init, out_shardings=tree_shardings(opt_shapes, mesh, min_size=min_size))(
      trainable)
  if memory_kind != DEVICE:  # the adapters and moments follow (initialised on the device)
    trainable, opt_state = (_place(t, mesh, min_size, memory_kind) for t in (trainable, opt_state))
  return ExpertState(graphdef, trainable, frozen, opt_state)


def _global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  return global_batch_from_local({k: np.asarray(batch[k], np.float32) for k in BATCH_NDIMS},
                                 mesh)


class Outputs:
  """Files users take away, written by process 0 only."""

  def __init__(self, cfg, workdir: Path, enc: models.Encoders, pipeline: Pipeline):
    self.cfg, self.workdir, self.enc, self.pipeline = cfg, workdir, enc, pipeline
    self.main = jax.process_index() == 0
    self.metrics = MetricsLog(workdir / "metrics.jsonl") if self.main else None
    self.tb = ScalarWriter(workdir / "tensorboard") if self.main else None
    if self.main:  # temporaries of files being written when an earlier run was killed
      for folder in (workdir, workdir / "lora", workdir / "weights", workdir / "previews"):
        for stray in stray_temporaries(folder):
          stray.unlink()
          log.warning("removed %s, left by an interrupted write", stray)

  def log(self, step: int, values: dict[str, float]) -> None:
    if self.main:
      with writing(f"the metrics ({self.metrics.path} and tensorboard/)"):
        self.metrics.append({"step": step, **values})
        self.tb.scalars(step, {k: v for k, v in values.items() if isinstance(v, (int, float))})

  def weights(self, experts: dict[str, ExpertState], step: int | None) -> list[Path]:
    """LoRA files (or full weights) per trained expert; step None = the final, unnumbered ones.

    Every process calls this (gathering sharded LoRA weights is collective); process 0 writes.
    """
    cfg, out = self.cfg, []
    if jax.process_count() > 1 and not cfg.lora.enabled:
      raise NotImplementedError("exporting a full fine-tune from a multi-host run is not "
                                "supported yet; export from the Orbax checkpoint on one host")
    folder = self.workdir / ("lora" if cfg.lora.enabled else "weights")
    for name, st in experts.items():
      trainable = st.trainable
      if jax.process_count() > 1:
        trainable = multihost_utils.process_allgather(trainable, tiled=True)
      if not self.main:
        continue
      stem = f"{cfg.save.name}_{step:06d}" if step is not None else cfg.save.name
      path = folder / f"{stem}_{CHECKPOINT_NAMES[name]}.safetensors"
      meta = {"step": str(step if step is not None else st.steps), "expert": CHECKPOINT_NAMES[name],
              "wan_jax_train_config": self.cfg.to_json()}
      model = nnx.merge(st.graphdef, trainable, st.frozen)
      with writing(str(path)):
        if cfg.lora.enabled:
          out.append(save_lora(model, path, metadata=meta, dtype=cfg.save.dtype))
        else:
          out.append(save_full(model, path, dtype=cfg.save.dtype, metadata=meta))
    return out

  def previews(self, experts: dict[str, ExpertState], step: int,
               bring: Callable[[str], None] | None = None) -> list[Path]:
    """Samples the preview prompts. Every process samples (the weights are sharded over all of
    them); only process 0 keeps the files.

    With offloading, `bring(name)` swaps an expert onto the device, and the sampler runs the
    high-noise steps with one expert, then the low-noise steps with the other, so only one
    expert is ever on the device.
    """
    cfg = self.cfg.preview
    if not cfg.prompts:
      return []
    boundary = self.cfg.model.boundary
    if bring is not None and len(experts) == 2:
      current: dict[str, DualWanTransformer] = {}

      def dual(t: float) -> DualWanTransformer:
        name = HIGH if t >= boundary * NUM_TRAIN_TIMESTEPS else LOW
        if name not in current:
          current.clear()  # drop the other expert's view before it leaves the device
          bring(name)
          st = experts[name]
          expert = nnx.merge(st.graphdef, st.trainable, st.frozen)
          current[name] = DualWanTransformer(expert, expert, boundary)
        return current[name]
    else:
      models_by_name = {name: nnx.merge(st.graphdef, st.trainable, st.frozen)
                        for name, st in experts.items()}
      if len(models_by_name) == 1:  # the untrained expert, as released, for this preview only
        (trained, model), = models_by_name.items()
        idle = LOW if trained == HIGH else HIGH
        try:
          models_by_name[idle] = models.load_expert(self.cfg, idle)
        except (ValueError, OSError) as e:  # e.g. a checkpoint converted with one expert only
          log.warning("previews use the trained %s-noise expert for every step: the %s-noise "
                      "expert could not be loaded (%s)", trained, idle, e)
          models_by_name[idle] = model
      dual = DualWanTransformer(models_by_name[HIGH], models_by_name[LOW], boundary)
    vae = self.enc.load_vae()  # only for the preview: the VAE never stays in training memory
    plan = self.pipeline.cache_plan
    contexts = [jnp.asarray(plan.prompt(p)) for p in cfg.prompts]
    negative = jnp.asarray(plan.prompt(cfg.negative_prompt))[None]
    with contextlib.ExitStack() as stack:
      out_dir = (self.workdir / "previews" if self.main else
                 Path(stack.enter_context(tempfile.TemporaryDirectory())))
      stack.enter_context(writing(f"the previews under {out_dir}"))
      paths = render_previews(
          dual, vae, list(cfg.prompts), contexts, negative, out_dir, step,
          height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, num_steps=cfg.num_steps,
          shift=cfg.shift, guidance=Guidance(cfg.guidance_low_noise, cfg.guidance_high_noise),
          seed=cfg.seed)
    return paths if self.main else []

  def plot(self) -> Path | None:
    if not self.main:
      return None
    rows = self.metrics.rows()
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r}  # a resumed run rewrites steps
    steps = sorted(by_step)
    with writing(str(self.workdir / "loss.png")):
      return save_loss_plot(steps, [by_step[s] for s in steps], self.workdir / "loss.png")

  def close(self) -> None:
    if self.main:
      self.metrics.close()
      self.tb.close()


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
  names = models.trained_experts(cfg)
  if jax.process_count() > 1 and not cfg.lora.enabled and cfg.save.every:
    raise ValueError("exporting a full fine-tune from a multi-host run is not supported yet: set "
                     "save.every=0 and export from the Orbax checkpoint on one host")
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  with writing(f"the generated demo data under {workdir / 'demo_data'}"):
    prepare_datasets(cfg, workdir)  # the demo's generated folders are part of what a resume checks
  with writing(f"the checkpoint folder {workdir / 'checkpoints'}"):
    ckpt = None if cache_only else Checkpoints(workdir / "checkpoints", cfg.checkpoint.every,
                                               cfg.checkpoint.keep, cfg.checkpoint.async_save)
  # The newest checkpoint whose metadata reads: a mismatched resume is refused before anything
  # big loads. Its arrays are verified when restored; a damaged one falls back to the previous.
  found = None if ckpt is None else ckpt.newest_meta()
  if found is not None:
    _check_resume(found[1].get("settings"), cfg, int(found[1]["step"]), workdir)
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
  horizon = max(batches_per_expert(int(cfg.train.steps), HIGH in names, LOW in names,
                                   int(cfg.train.switch_boundary_every)).values())
  tx = make_optimizer(cfg.train, horizon)
  vae = enc.vae_config
  settings = StepSettings(cfg.train.timestep_sampling, float(cfg.train.shift),
                          float(cfg.train.logit_mean), float(cfg.train.logit_std),
                          bool(cfg.train.sample_posterior), tuple(vae.latents_mean),
                          tuple(vae.latents_std))
  # Before any big weights load: how the run fits the device, and its compiled step.
  planned = plan_train_step(cfg, names, tx, settings, mesh, pipeline, enc.text_len, progress)
  print(planned.plan.line(), flush=True)
  remat = planned.plan.chosen.remat
  offload = planned.plan.chosen.offload_expert and len(names) == 2
  # With offloading, every expert but the first waits in host memory from the start.
  experts = {name: _expert_state(cfg, name, tx, mesh, remat, HOST if offload and i else DEVICE)
             for i, name in enumerate(names)}
  min_size = int(cfg.mesh.min_shard_size)
  step_fn = planned.step

  iterator = iter(pipeline.dataset)
  start = 0
  if found is not None:
    shardings = {n: {"trainable": tree_shardings(e.trainable, mesh, min_size=min_size),
                     "opt": tree_shardings(e.opt_state, mesh, min_size=min_size)}
                 for n, e in experts.items()}
    target = {n: {"trainable": abstract_like(e.trainable, shardings[n]["trainable"]),
                  "opt": abstract_like(e.opt_state, shardings[n]["opt"])}
              for n, e in experts.items()}
    _, state, meta = ckpt.restore_newest(
        target, iterator, lambda m: _check_resume(m.get("settings"), cfg, int(m["step"]), workdir))
    for n, e in experts.items():
      e.trainable, e.opt_state = state[n]["trainable"], state[n]["opt"]
      e.steps = int(meta["expert_steps"][n])
      if offload and n != names[0]:
        _move(e, mesh, min_size, HOST)
    start, summary.resumed_from = int(meta["step"]), int(meta["step"])
    summary.skipped_steps = int(meta["skipped_steps"])
    summary.skipped_rows = int(meta.get("skipped_rows", 0))
    summary.substituted_rows = int(meta.get("substituted_rows", 0))
    print(f"resuming from {workdir / 'checkpoints'} at step {start}", flush=True)

  outputs = Outputs(cfg, workdir, enc, pipeline)
  schedule = learning_rate(cfg.train, horizon)
  steps = int(cfg.train.steps)
  recent: list[float] = []
  skipped_in_a_row = 0
  bar = tqdm.tqdm(total=steps, initial=start, desc="training", unit="step",
                  disable=not progress or jax.process_index() != 0)

  def state_tree():
    return {n: {"trainable": e.trainable, "opt": e.opt_state} for n, e in experts.items()}

  def meta(step: int) -> dict:
    return {"step": step, "skipped_steps": summary.skipped_steps,
            "settings": resume_settings(cfg), "skipped_rows": summary.skipped_rows,
            "substituted_rows": summary.substituted_rows,
            "expert_steps": {n: e.steps for n, e in experts.items()}, "seed": int(cfg.seed)}

  placed = {"on_device": names[0]}

  def bring(name: str) -> None:
    """With offloading: the named expert onto the device, the other into host memory."""
    if name != placed["on_device"]:
      _move(experts[placed["on_device"]], mesh, min_size, HOST)
      _move(experts[name], mesh, min_size, DEVICE)
      placed["on_device"] = name

  preview_args = {"bring": bring} if offload else {}
  try:
    for step in range(start, steps):
      name = active_expert(step, HIGH in names, LOW in names, int(cfg.train.switch_boundary_every))
      e = experts[name]
      if offload:  # the idle expert waits in host memory
        bring(name)
      batch = next(iterator)
      summary.substituted_rows += int(np.sum(batch["substituted"] & batch["valid"]))
      summary.skipped_rows += int(np.sum(~batch["valid"]))
      t_low, t_high = expert_range(name, float(cfg.model.boundary))
      tic = time.perf_counter()
      e.trainable, e.opt_state, m = step_fn(
          e.trainable, e.opt_state, e.frozen, _global_batch(batch, mesh), step_keys(cfg.seed, step),
          jnp.float32(t_low), jnp.float32(t_high))
      loss, finite = float(m["loss"]), bool(m["finite"])  # waits for the step
      seconds = time.perf_counter() - tic
      if finite:
        e.steps += 1  # the optimizer's own count: a skipped step does not advance it
        skipped_in_a_row = 0
      else:
        summary.skipped_steps += 1
        skipped_in_a_row += 1
        log.warning("step %d: non-finite loss, gradients or updated weights; update skipped",
                    step + 1)
      if finite:
        recent = (recent + [loss])[-20:]
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
        ckpt.save(done, state_tree(), meta(done), iterator)
        if cfg.save.every and done % int(cfg.save.every) == 0:
          summary.files += map(str, outputs.weights(experts, done))
        if cfg.preview.every and done % int(cfg.preview.every) == 0:
          summary.files += map(str, outputs.previews(experts, done, **preview_args))
    bar.close()
    if start < steps or ckpt.latest() != steps:
      ckpt.save(steps, state_tree(), meta(steps), iterator, force=True)
    ckpt.wait()
    summary.steps = steps
    summary.final_loss = float(np.mean(recent)) if recent else math.nan
    summary.files += map(str, outputs.weights(experts, None))
    if cfg.preview.every:
      summary.files += map(str, outputs.previews(experts, steps, **preview_args))
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

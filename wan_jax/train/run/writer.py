"""What a run hands over besides checkpoints: metrics (metrics.jsonl, TensorBoard and, when
configured, W&B: trackers.py), LoRA or full weight files (their metadata: lora_metadata.py),
previews and the loss plot. Written by process 0 only; temporaries left by a killed earlier run
are removed when a run starts."""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from wan_jax.data.pipeline import Pipeline
from wan_jax.files import stray_temporaries, writing
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.flow_matching import threshold
from wan_jax.train.outputs.lora_metadata import weights_metadata
from wan_jax.train.outputs.plot import save_loss_plot
from wan_jax.train.outputs.preview import Guidance, preview_conditions, render_previews
from wan_jax.train.outputs.trackers import Trackers
from wan_jax.train.run import loading
from wan_jax.train.run.expert_states import Experts
from wan_jax.train.step.expert_schedule import HIGH, LOW
from wan_jax.weights.export import save_full, save_lora

log = logging.getLogger(__name__)


def exports_weight_files(cfg: ml_collections.ConfigDict, process_count: int) -> bool:
  """The one multi-host export rule: LoRA weights (megabytes) are gathered from every process
  and process 0 writes the files, numbered and final; a full fine-tune on several processes
  writes none (gathering each 27 GB expert onto one host would not fit): its weights are the
  Orbax checkpoints'. One process always writes its files."""
  return bool(cfg.lora.enabled) or process_count == 1


class Outputs:
  """Files users take away, written by process 0 only."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path, enc: loading.Encoders,
               pipeline: Pipeline, progress: bool = False):
    self.cfg, self.workdir, self.enc, self.pipeline = cfg, workdir, enc, pipeline
    self.main = jax.process_index() == 0
    self.progress = progress and self.main  # a bar over the preview sampler's steps
    # metrics.jsonl, TensorBoard, and W&B when logging.wandb_project is set (a failure to open
    # it is one line)
    self.trackers = Trackers(cfg, workdir) if self.main else None
    if self.main:  # temporaries of files being written when an earlier run was killed
      for folder in (workdir, workdir / "lora", workdir / "weights", workdir / "previews"):
        for stray in stray_temporaries(folder):
          stray.unlink()
          log.warning("removed %s, left by an interrupted write", stray)

  def log(self, step: int, values: dict[str, float | str | bool]) -> None:
    if self.main:
      row = {"step": step, **values}
      with writing(f"the metrics ({self.trackers.metrics.path} and tensorboard/)"):
        self.trackers.log(step, row)

  def weights(self, experts: Experts, step: int | None) -> list[Path]:
    """LoRA files (or full weights) per trained expert; step None = the final, unnumbered ones
    (at the global step train.steps). A numbered save also redraws loss.png.

    Every process calls this (gathering sharded LoRA weights is collective); process 0 writes.
    """
    cfg, out = self.cfg, []
    if not exports_weight_files(cfg, jax.process_count()):  # said once at start (setup.py)
      return out
    folder = self.workdir / ("lora" if cfg.lora.enabled else "weights")
    for name, st in experts.items():
      if st.steps == 0:  # the same on every process: the gather below is skipped by all
        if self.main:
          log.warning("no file for the %s-noise expert%s: it has not trained a step yet "
                      "(train.switch_boundary_every=%d)", name,
                      f" at step {step}" if step is not None else "",
                      int(cfg.train.switch_boundary_every))
        continue
      trainable = st.trainable
      if jax.process_count() > 1:
        trainable = multihost_utils.process_allgather(trainable, tiled=True)
      if not self.main:
        continue
      stem = f"{cfg.save.name}_{step:06d}" if step is not None else cfg.save.name
      path = folder / f"{stem}{loading.variant(cfg).file_suffix(name)}.safetensors"
      meta = weights_metadata(
          cfg, name, step=step if step is not None else int(cfg.train.steps),
          expert_step=st.steps, buckets=self.pipeline.buckets(),
          num_items=len({str(item.media) for item in self.pipeline.report.items}))
      model = nnx.merge(st.graphdef, trainable, st.frozen)
      with writing(str(path)):
        if cfg.lora.enabled:
          out.append(save_lora(model, path, metadata=meta, dtype=cfg.save.dtype))
        else:
          out.append(save_full(model, path, dtype=cfg.save.dtype, metadata=meta))
    if self.main and step is not None:
      self.plot()
    return out

  def previews(self, experts: Experts, step: int) -> list[Path]:
    """Samples the preview prompts. Every process samples (the weights are sharded over all of
    them); only process 0 keeps the files.

    With offloading, the sampler runs the high-noise steps with one expert, then swaps it for
    the other (`experts.bring`) for the low-noise steps, so only one expert is ever on the device.
    """
    cfg = self.cfg.preview
    if not cfg.prompts:
      return []
    dual = self._sampler(experts)
    vae = self.enc.load_vae()  # only for the preview: the VAE never stays in training memory
    plan = self.pipeline.cache_plan
    contexts = [jnp.asarray(plan.prompt(p)) for p in cfg.prompts]
    negative = jnp.asarray(plan.prompt(cfg.negative_prompt))[None]
    task = loading.task(self.cfg)  # image-to-video: each prompt's image, encoded
    images = list(cfg.get("images", [])) if task.takes_preview_images else []
    lasts = list(cfg.get("last_images", [])) if images else []  # first-last frame
    conditions = preview_conditions(task, vae, images, lasts, cfg.height, cfg.width,
                                    cfg.num_frames)
    with contextlib.ExitStack() as stack:
      out_dir = (self.workdir / "previews" if self.main else
                 Path(stack.enter_context(tempfile.TemporaryDirectory())))
      stack.enter_context(writing(f"the previews under {out_dir}"))
      paths = render_previews(
          dual, vae, list(cfg.prompts), contexts, negative, out_dir, step,
          height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, num_steps=cfg.num_steps,
          shift=cfg.shift, guidance=Guidance(cfg.guidance_low_noise, cfg.guidance_high_noise),
          seed=cfg.seed, conditions=conditions, images=images, last_images=lasts,
          progress=self.progress, task=task,
          fps=int(cfg.get("fps", loading.variant(self.cfg).preview.fps)))
    if self.main:
      with writing(f"the previews in tensorboard/ under {self.workdir}"):
        self.trackers.previews(step, paths, list(cfg.prompts))
    return paths if self.main else []

  def _sampler(self, experts: Experts):
    """The dual model previews sample with (a function of t with offloading)."""
    boundary = self.cfg.model.boundary
    if experts.offload:
      current: dict[str, DualWanTransformer] = {}

      def dual(t: float) -> DualWanTransformer:
        name = HIGH if t >= threshold(boundary) else LOW
        if name not in current:
          current.clear()  # drop the other expert's view before it leaves the device
          experts.bring(name)
          expert = experts[name].model()
          current[name] = DualWanTransformer(expert, expert, boundary)
        return current[name]
      return dual
    models_by_name = {name: st.model() for name, st in experts.items()}
    if len(models_by_name) == 1:  # the untrained expert, as released, for this preview only
      (trained, model), = models_by_name.items()
      idle = LOW if trained == HIGH else HIGH
      if loading.variant(self.cfg).single_expert:  # one model for every t (boundary 0)
        return DualWanTransformer(model, model, boundary)
      try:
        models_by_name[idle] = loading.load_expert(self.cfg, idle)
      except (ValueError, OSError) as e:  # e.g. a checkpoint converted with one expert only
        log.warning("previews use the trained %s-noise expert for every step: the %s-noise "
                    "expert could not be loaded (%s)", trained, idle, e)
        models_by_name[idle] = model
    return DualWanTransformer(models_by_name[HIGH], models_by_name[LOW], boundary)

  def plot(self) -> Path | None:
    """loss.png from metrics.jsonl: one panel per trained expert (plot.py)."""
    if not self.main:
      return None
    with writing(str(self.workdir / "loss.png")):
      return save_loss_plot(self.trackers.metrics.rows(), self.workdir / "loss.png",
                            experts=loading.variant(self.cfg).experts)

  def close(self) -> None:
    """Closes the metrics and trackers; called while an exception is handled, the W&B run is
    marked failed."""
    if self.main:
      self.trackers.close(failed=sys.exc_info()[0] is not None)

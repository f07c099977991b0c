"""The train step a run uses: planned for the device before the weights load, then compiled once
per batch shape (the planner's compile serves the largest bucket; other buckets compile on first
use).

The planner needs no weights: the experts' structure comes from `nnx.eval_shape` and the
checkpoint's config, the batch's from the largest bucket, so a plan that cannot fit is refused in
seconds, not after minutes of loading.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from wan_jax.data.pipeline import Pipeline
from wan_jax.data.weight_maps import latent_frames
from wan_jax.model.latent_geometry import WAN21, LatentGeometry
from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.model.transformer import WanTransformer
from wan_jax.tasks import TEXT_TO_VIDEO, Task
from wan_jax.train.run import loading
from wan_jax.train.run.validate import auto_or_bool
from wan_jax.train.step import memory_plan
from wan_jax.train.step.sharding import batch_sharding, streamed, tree_shardings
from wan_jax.train.step.train_step import StepSettings, make_train_step, step_keys

log = logging.getLogger(__name__)


def explicit_settings(cfg: ml_collections.ConfigDict
                      ) -> tuple[str | None, bool | None, bool | None]:
  """(remat plan, idle expert offloaded, block weights streamed) as the user fixed them; None =
  the planner decides.

  `train.gradient_checkpointing=False` is the older spelling of `train.remat_policy=none`.
  Streaming is for the frozen base of a LoRA run, under a checkpointing plan (without one the
  backward pass would keep every fetched block on the device); `auto` never streams otherwise.
  """
  remat = str(cfg.train.remat_policy)
  if not cfg.train.gradient_checkpointing:
    if remat not in ("auto", "none"):
      raise ValueError(f"train.gradient_checkpointing=False contradicts train.remat_policy="
                       f"{remat!r}; set only train.remat_policy")
    remat = "none"
  offload = cfg.train.offload_inactive_expert
  stream = auto_or_bool(cfg, "train.stream_weights")
  if stream and not cfg.lora.enabled:
    raise ValueError("train.stream_weights=True streams the frozen base of a LoRA run; a full "
                     "fine-tune (lora.enabled=False) trains the block weights, so they stay on "
                     "the device")
  if stream and remat == "none":
    raise ValueError("train.stream_weights=True needs gradient checkpointing: with "
                     "train.remat_policy=none the backward pass keeps every block's weights on "
                     "the device")
  if stream is None and (not cfg.lora.enabled or remat == "none"):
    stream = False
  return ((None if remat == "auto" else remat), (None if offload is None else bool(offload)),
          stream)


def largest_bucket(pipeline: Pipeline) -> tuple[int, int, int]:
  """(frames, height, width) of the bucket with the most tokens."""
  return max(pipeline.buckets(),
             key=lambda b: (latent_frames(b[0]) * b[1] * b[2], b))


def abstract_batch(bucket: tuple[int, int, int], batch_size: int, text_len: int, text_dim: int,
                   mesh: jax.sharding.Mesh, task: Task = TEXT_TO_VIDEO,
                   geometry: LatentGeometry = WAN21) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes a cached batch of this bucket has on the device (every array float32)."""
  grid = (batch_size, *geometry.grid(*bucket))
  channels = geometry.channels
  shapes = {"latent_mean": (*grid, channels), "latent_logvar": (*grid, channels),
            "weights": grid, "context": (batch_size, text_len, text_dim),
            "loss_multiplier": (batch_size,),
            **{k: (*grid, c) for k, c in task.pixel_arrays.items()}}
  return {k: jax.ShapeDtypeStruct(shapes[k], jnp.float32, sharding=batch_sharding(mesh, n))
          for k, n in task.batch_ndims.items()}


@dataclasses.dataclass
class AbstractExpert:
  """One expert's state as shapes, dtypes and shardings: what the step compiles against."""

  graphdef: nnx.GraphDef
  trainable: Any
  frozen: Any
  opt_state: Any
  text_dim: int

  def device_bytes(self) -> int:
    return memory_plan.device_bytes((self.trainable, self.frozen, self.opt_state))

  def host_bytes(self) -> int:
    """What this expert's step takes from pinned host memory (its streamed block weights)."""
    return memory_plan.device_bytes((self.trainable, self.frozen, self.opt_state), "pinned_host")


def _with_shardings(tree: Any, mesh, min_size: int) -> Any:
  shardings = tree_shardings(tree, mesh, min_size=min_size)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def abstract_expert(cfg: ml_collections.ConfigDict, expert: str, remat: str, tx,
                    mesh: jax.sharding.Mesh, stream: bool = False) -> AbstractExpert:
  model_cfg = loading.expert_config(cfg, expert, remat)

  def build() -> WanTransformer:
    model = WanTransformer(model_cfg, rngs=nnx.Rngs(0))
    if cfg.lora.enabled:
      add_lora(model, int(cfg.lora.rank), float(cfg.lora.alpha), list(cfg.lora.targets), seed=0)
    return model

  model = nnx.eval_shape(build)
  if cfg.lora.enabled:
    graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
  else:
    graphdef, trainable, frozen = nnx.split(model, nnx.Param, ...)
  min_size = int(cfg.mesh.min_shard_size)
  trainable, frozen = (_with_shardings(t, mesh, min_size) for t in (trainable, frozen))
  if stream:
    frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          frozen, streamed(jax.tree.map(lambda x: x.sharding, frozen)))
  opt_state = _with_shardings(jax.eval_shape(tx.init, trainable), mesh, min_size)
  return AbstractExpert(graphdef, trainable, frozen, opt_state, model_cfg.text_dim)


def _shape_key(batch: dict[str, Any]) -> tuple:
  return tuple((k, tuple(batch[k].shape)) for k in sorted(batch))


class CompiledStep:
  """make_train_step's function, compiled ahead of time per batch shape and reused."""

  def __init__(self, jitted: Callable, remat: str):
    self.jitted, self.remat = jitted, remat
    self.compiled: dict[tuple, Any] = {}

  def compile(self, *args: Any) -> Any:
    key = _shape_key(args[3])
    if key not in self.compiled:
      start = time.perf_counter()
      self.compiled[key] = self.jitted.lower(*args).compile()
      log.info("compiled the train step (%s) for %s in %.1f s", self.remat,
               dict(key)["latent_mean"], time.perf_counter() - start)
    return self.compiled[key]

  def __call__(self, trainable, opt_state, frozen, batch, key, t_low, t_high):
    args = (trainable, opt_state, frozen, batch, key, t_low, t_high)
    return self.compile(*args)(*args)


@dataclasses.dataclass
class PlannedStep:
  plan: memory_plan.Plan
  step: CompiledStep  # compiled for the plan; the planner's compile serves the largest bucket


def _scalar() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jnp.float32)


def plan_train_step(cfg: ml_collections.ConfigDict, names: tuple[str, ...], tx,
                    settings: StepSettings, mesh: jax.sharding.Mesh, pipeline: Pipeline,
                    text_len: int, progress: bool = True) -> PlannedStep:
  """Chooses the memory plan for this run and compiles its step for the largest bucket."""
  remat, offload, stream = explicit_settings(cfg)
  two = len(names) == 2
  if offload and not two:
    log.warning("train.offload_inactive_expert has no effect: only one expert is trained (and "
                "only that one is loaded)")
  mode = str(cfg.train.memory_plan)
  if mode not in ("auto", "off"):
    raise ValueError(f"train.memory_plan must be 'auto' or 'off', got {mode!r}")
  bucket = largest_bucket(pipeline)
  f, h, w = bucket
  label = f"the largest bucket, {f}x{h}x{w} (frames x height x width), batch {cfg.train.batch_size}"
  cands = memory_plan.candidates(two, remat, offload, stream)
  min_size = int(cfg.mesh.min_shard_size)
  experts: dict[tuple[str, bool], AbstractExpert] = {}
  steps: dict[tuple[str, bool], CompiledStep] = {}

  def step_for(plan_remat: str, plan_stream: bool) -> CompiledStep:
    key = (plan_remat, plan_stream)
    if key not in steps:
      e = experts[key] = abstract_expert(cfg, names[0], plan_remat, tx, mesh, plan_stream)
      jitted = make_train_step(e.graphdef, tx, settings, mesh, e.trainable, e.opt_state,
                               e.frozen, min_size=min_size, stream=plan_stream)
      steps[key] = CompiledStep(jitted, plan_remat + (", streamed" if plan_stream else ""))
    return steps[key]

  def compiled_memory(plan_remat: str, plan_stream: bool) -> memory_plan.StepMemory:
    step = step_for(plan_remat, plan_stream)
    e = experts[plan_remat, plan_stream]
    batch = abstract_batch(bucket, int(cfg.train.batch_size), text_len, e.text_dim, mesh,
                           settings.task, loading.variant(cfg).geometry)
    key = jax.eval_shape(lambda: step_keys(0, 0))
    if progress:
      print(f"planning memory: compiling the step with {step.remat} for {f}x{h}x{w}", flush=True)
    compiled = step.compile(e.trainable, e.opt_state, e.frozen, batch, key, _scalar(), _scalar())
    residuals = 0
    if "offload_residual" in plan_remat:  # each block's fp32 input, per device, in host memory
      lat = batch["latent_mean"]
      rows, frames, height, width, _ = lat.sharding.shard_shape(lat.shape)
      cfg_m = loading.expert_config(cfg, names[0], plan_remat)
      pt, ph, pw = cfg_m.patch_size
      tokens = (frames // pt) * (height // ph) * (width // pw)
      residuals = cfg_m.num_layers * rows * tokens * cfg_m.dim * 4
    return memory_plan.StepMemory.of(compiled, e.host_bytes(), residuals)

  if mode == "off":
    chosen = memory_plan.Candidate(remat or "full", bool(offload) and two, bool(stream))
    plan = memory_plan.Plan(chosen, None, [], None, "train.memory_plan=off", two, label)
  else:
    usable, source = memory_plan.usable_memory(float(cfg.train.device_memory_gib),
                                               float(cfg.train.memory_margin))
    idle = 0
    if two and usable is not None:  # the other expert has the same shapes; planned as "full"
      idle = abstract_expert(cfg, names[1], "full", tx, mesh).device_bytes()

    def advice(smallest: memory_plan.Estimate, room: int) -> str:
      c = smallest.candidate
      fp8 = None
      if str(cfg.model.quantize) == "none":  # never chosen for the user: proposed, with a figure
        fp8 = smallest.total - _fp8_saving(cfg, names, c, tx, mesh, experts[c.remat, c.stream],
                                           smallest.idle)
      return _advice(smallest, room, bucket, experts[c.remat, c.stream],
                     int(cfg.train.batch_size), fp8, loading.variant(cfg).geometry.temporal)

    host_usable, host_source = memory_plan.usable_host_memory(
        float(cfg.train.host_memory_gib), float(cfg.train.memory_margin))
    plan = memory_plan.choose(cands, compiled_memory, idle, usable, capacity_source=source,
                              two_experts=two, bucket=label, advice=advice,
                              host_usable=host_usable, host_source=host_source,
                              local_devices=jax.local_device_count())
  step = step_for(plan.chosen.remat, plan.chosen.stream)
  return PlannedStep(plan, step)


def _fp8_saving(cfg: ml_collections.ConfigDict, names: tuple[str, ...],
               candidate: memory_plan.Candidate, tx, mesh: jax.sharding.Mesh,
               bf16: AbstractExpert, idle: int) -> int:
  """Device bytes an fp8 base would free under `candidate`: the trained expert's frozen weights
  on the device (streamed blocks are not there) and the idle expert's when it stays there (its
  planned bf16 `idle` bytes), less the one block whose weights are dequantised at a time. The
  step's other memory is taken as unchanged."""
  quantized = cfg.copy_and_resolve_references()
  quantized.model.quantize = "fp8"
  fp8 = abstract_expert(quantized, names[0], candidate.remat, tx, mesh, candidate.stream)
  saving = memory_plan.device_bytes(bf16.frozen) - memory_plan.device_bytes(fp8.frozen)
  stored = [x for x in jax.tree.leaves(fp8.frozen) if x.dtype == jnp.float8_e4m3fn]
  layers = loading.expert_config(cfg, names[0], candidate.remat).num_layers
  compute = jnp.dtype(cfg.model.dtype).itemsize
  saving -= sum(x.size for x in stored) // layers * compute  # one block, dequantised
  if idle:  # the idle expert's bytes on the device (0 when it waits in host memory)
    saving += idle - abstract_expert(quantized, names[1], "full", tx, mesh).device_bytes()
  return max(0, saving)


def _advice(smallest: memory_plan.Estimate, usable: int, bucket: tuple[int, int, int],
            expert: AbstractExpert, batch_size: int, fp8_total: int | None = None,
            temporal: int = 4) -> str:
  f, h, w = bucket
  options = []
  if fp8_total is not None and fp8_total <= usable:
    options.append(f"model.quantize=fp8 (predicted {memory_plan.size(fp8_total)} for that plan; "
                   f"an fp8 base changes the model's numbers a little: docs/training.md)")
  frames = memory_plan.frames_that_fit(f, smallest, usable, temporal)
  if 0 < frames < f:
    options.append(f"about {frames} frames at {h}x{w} (datasets[*].num_frames)")
  options.append("a lower resolution (datasets[*].resolution)")
  weights = memory_plan.device_bytes((expert.frozen, expert.trainable, expert.opt_state))
  n = memory_plan.fsdp_that_fits(smallest, weights, usable)
  if n:
    options.append(f"mesh.fsdp={n} over {n} GPUs with train.batch_size={n * batch_size} (the "
                   f"weights split {n} ways, the same rows per GPU)")
  return ("what would fit: " + ", or ".join(options) +
          " (train.memory_plan=off skips this check and tries anyway)")

"""Preview samples during training: Wan 2.2 A14B's text-to-video recipe, as a plain Euler sampler.

Facts taken from upstream Wan 2.2 (wan/configs/wan_t2v_A14B.py, wan/text2video.py):
  - flow matching: x_s = (1 - s) x0 + s eps, the model predicts v = eps - x0 at t = 1000 s;
  - the schedule is shifted, s' = shift s / (1 + (shift - 1) s), shift 12 for T2V A14B (5 for I2V),
    40 steps;
  - the high-noise expert runs while t >= boundary * 1000 (0.875 for T2V), the low-noise one after;
  - classifier-free guidance v = v_neg + g (v_pos - v_neg) with one scale per expert, written
    `sample_guide_scale = (3.0, 4.0)  # low noise, high noise`: the FIRST number is the low-noise
    scale. `Guidance` keeps that order so values copied from upstream mean the same here.

Where this differs from upstream, on purpose:
  - Euler instead of upstream's default UniPC (2nd-order multistep). Euler is the first-order
    solver of the very ODE the training loss defines, keeps no history across steps (so nothing
    carries over the expert switch) and needs one small step function. At equal step counts it is
    a little softer than UniPC, which a preview of training progress can afford.
  - the schedule starts at s = 1 (pure noise) and keeps float timesteps; upstream starts at 0.999,
    the top of its 1000-step training grid, and truncates timesteps to integers.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from wan_jax.data.examples import read_start_image
from wan_jax.model import flow_matching
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.flow_matching import NUM_TRAIN_TIMESTEPS
from wan_jax.model.vae import WanVAE, decode_latents
from wan_jax.tasks import TEXT_TO_VIDEO, Task
from wan_jax.train.outputs import media_out

F32 = jnp.float32
PATCH = 2  # the transformer's spatial patch on the latent grid
log = logging.getLogger(__name__)


class Guidance(NamedTuple):
  """Classifier-free guidance scales per expert, in upstream's order (low_noise, high_noise)."""
  low_noise: float = 3.0
  high_noise: float = 4.0


DEFAULT_STEPS = 40
DEFAULT_SHIFT = 12.0
DEFAULT_GUIDANCE = Guidance(3.0, 4.0)  # Wan 2.2 T2V A14B


def flow_sigmas(num_steps: int, shift: float) -> np.ndarray:
  """num_steps + 1 noise levels from 1 down to 0, shifted toward the noisy end (float64)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not shift > 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  return flow_matching.shift(np.linspace(1.0, 0.0, num_steps + 1), shift)


def _as_guidance(guidance: Guidance | tuple[float, float] | float) -> Guidance:
  if isinstance(guidance, (int, float)):
    return Guidance(float(guidance), float(guidance))
  low, high = guidance
  return Guidance(float(low), float(high))


def _as_batch(context: jax.Array) -> jax.Array:
  """[L, T] or [B, L, T] -> [B, L, T]."""
  context = jnp.asarray(context)
  if context.ndim == 2:
    context = context[None]
  if context.ndim != 3:
    raise ValueError(f"a context must be [L, T] or [B, L, T], got {context.shape}")
  return context


def _pad_rows(context_BxLxT: jax.Array, length: int) -> jax.Array:
  """Zero rows at the end: exact, since the transformer zero-pads every context to text_len."""
  return jnp.pad(context_BxLxT, ((0, 0), (0, length - context_BxLxT.shape[1]), (0, 0)))


@functools.partial(nnx.jit, static_argnames=("cfg", "task"))
def _euler_step(model: DualWanTransformer, x_BxFxHxWxC: jax.Array, t: jax.Array, dt: jax.Array,
                context_BxLxT: jax.Array, negative_BxLxT: jax.Array, scales: jax.Array,
                condition_BxFxHxWxK: jax.Array | None, cfg: str, task: Task) -> jax.Array:
  """x + dt v at timestep t, v guided with the scale of the expert that t selects. The
  condition (image-to-video) is the same for the guided and unguided passes, as upstream; the
  task says how it enters (condition channels, or the TI2V's image latent in frame 0)."""
  b = x_BxFxHxWxC.shape[0]
  t_B = jnp.full((b,), t, F32)
  x_in, t_in, cond = task.sample_inputs(x_BxFxHxWxC, t_B, condition_BxFxHxWxK)
  # One timestep for the whole batch, so no straddle check (that keeps the step cacheable).
  run = functools.partial(model, check_batch=False)
  if cfg == "off":
    v = run(x_in, t_in, context_BxLxT, cond).astype(F32)
  else:
    if cfg == "batched":  # both halves in one call: one weight read per step instead of two
      both = None if cond is None else jnp.concatenate([cond, cond])
      v_2B = run(jnp.concatenate([x_in, x_in]), jnp.concatenate([t_in, t_in]),
                 jnp.concatenate([context_BxLxT, negative_BxLxT]), both).astype(F32)
      v_pos, v_neg = v_2B[:b], v_2B[b:]
    else:  # "separate": half the activation memory
      v_pos = run(x_in, t_in, context_BxLxT, cond).astype(F32)
      v_neg = run(x_in, t_in, negative_BxLxT, cond).astype(F32)
    g = jnp.where(model.uses_high_noise(t_B), scales[1], scales[0])
    v = v_neg + g * (v_pos - v_neg)
  return x_BxFxHxWxC + dt * v


ModelAt = Callable[[float], DualWanTransformer]  # the model to use at timestep t


def sample_latents(model: DualWanTransformer | ModelAt, context: jax.Array,
                   negative_context: jax.Array | None, shape: Sequence[int], key: jax.Array, *,
                   num_steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT,
                   guidance: Guidance | tuple[float, float] | float = DEFAULT_GUIDANCE,
                   batch_cfg: bool = True, condition: jax.Array | None = None,
                   on_step: Callable[[], None] | None = None,
                   task: Task = TEXT_TO_VIDEO) -> jax.Array:
  """Euler-integrates the flow from noise (`jax.random.normal(key, shape)`) to latents [B,F,H,W,C].

  condition: what an image-to-video model reads beside the latents ([B, F, H, W, K],
  `wan_jax.i2v_condition`), or the TI2V's start-image latent; None for text-to-video. `task`
  says how it enters the model (`Task.sample_inputs`; the default: as condition channels).
  context [B, L, T] (or [L, T]); negative_context [B or 1, L', T] or None for no guidance.
  guidance is (low_noise, high_noise) as upstream writes it, or one number for both; scales of
  exactly 1 skip the unconditional pass. batch_cfg=False runs the two passes one after the other
  (half the activations, twice the weight reads). Latents stay fp32 throughout. `model` may also
  be a function of the timestep that returns the model for that step: a trainer that keeps one
  expert in device memory at a time swaps them there (all high-noise steps come first).
  `on_step()` is called after each step has run (a progress bar).
  """
  if len(shape) != 5:
    raise ValueError(f"shape must be [B, F, H, W, C], got {tuple(shape)}")
  g = _as_guidance(guidance)
  context = _as_batch(context)
  b = shape[0]
  if context.shape[0] != b:
    raise ValueError(f"context has batch {context.shape[0]}, latents {b}")
  cfg = "off"
  negative = context[:, :0]
  if negative_context is not None and g != Guidance(1.0, 1.0):
    cfg = "batched" if batch_cfg else "separate"
    negative = _as_batch(negative_context).astype(context.dtype)
    if negative.shape[0] not in (1, b) or negative.shape[2] != context.shape[2]:
      raise ValueError(f"negative_context {negative.shape} does not fit context {context.shape}")
    negative = jnp.broadcast_to(negative, (b, *negative.shape[1:]))
    length = max(context.shape[1], negative.shape[1])
    context, negative = _pad_rows(context, length), _pad_rows(negative, length)
  scales = jnp.asarray(g, F32)
  sigmas = flow_sigmas(num_steps, shift)
  x = jax.random.normal(key, tuple(shape), F32)
  for s, s_next in itertools.pairwise(sigmas):
    t = np.float32(s * NUM_TRAIN_TIMESTEPS)
    step_model = model if isinstance(model, DualWanTransformer) else model(float(t))
    x = _euler_step(step_model, x, t, np.float32(s_next - s), context, negative, scales,
                    condition, cfg=cfg, task=task)
    if on_step is not None:
      x.block_until_ready()  # the bar moves when a step has run, not when it was queued
      on_step()
  return task.finish_sample(x, condition)


def _check_size(height: int, width: int, num_frames: int, vae: WanVAE) -> None:
  spatial = vae.config.spatial_factor * PATCH
  temporal = vae.config.temporal_factor
  if height <= 0 or width <= 0 or height % spatial or width % spatial:
    raise ValueError(f"preview height and width must be positive multiples of {spatial} "
                     f"(the VAE's {vae.config.spatial_factor}x times the patch {PATCH}), "
                     f"got {height}x{width}")
  if num_frames < 1 or (num_frames - 1) % temporal:
    raise ValueError(f"preview num_frames must be {temporal}k+1 (1, {temporal + 1}, "
                     f"{2 * temporal + 1}, ...), got {num_frames}")


def preview_conditions(task: Task, vae: WanVAE, images: Sequence[str],
                       last_images: Sequence[str], height: int, width: int,
                       num_frames: int) -> list[jax.Array] | None:
  """Each prompt's condition for an image-to-video model (None without images: text-to-video):
  its start image, and its last image where `last_images` names one (first-last frame; "" or an
  empty list: none), each read and centre-cropped to the preview size as training crops are."""
  if not images:
    return None
  lasts = list(last_images) or [""] * len(images)
  if len(lasts) != len(images):
    raise ValueError(f"{len(images)} start images but {len(lasts)} last images (one path or "
                     "\"\" per prompt)")
  read = lambda path: read_start_image(Path(path), height, width) if path else None
  return [task.preview_condition(vae, read(first), num_frames, last_image=read(last))
          for first, last in zip(images, lasts)]


def _describe(header: str, prompts: Sequence[str], paths: Sequence[Path], settings: str) -> str:
  lines = [f"{header}: {settings}"]
  lines += [f"{p.name}\t{prompt}" for p, prompt in zip(paths, prompts)]
  return "\n".join(lines) + "\n"


def render_previews(model: DualWanTransformer | ModelAt, vae: WanVAE, prompts: list[str],
                    contexts: list[jax.Array], negative_context: jax.Array | None, out_dir: Path,
                    step: int, *, height: int = 480, width: int = 832, num_frames: int = 81,
                    num_steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT,
                    guidance: Guidance | tuple[float, float] | float = DEFAULT_GUIDANCE,
                    seed: int = 0, batch_cfg: bool = True,
                    conditions: Sequence[jax.Array | None] | None = None,
                    images: Sequence[str] | None = None,
                    last_images: Sequence[str] | None = None, progress: bool = False,
                    stem: str | None = None, task: Task = TEXT_TO_VIDEO,
                    fps: int = media_out.FPS) -> list[Path]:
  """Samples and decodes each prompt; writes out_dir/step_<step:06d>_<i>.mp4 (.png for 1 frame).

  conditions: one per prompt for an image-to-video model ([1, F', H/8, W/8, K], from
  `Task.preview_condition`, or `preview_conditions`), made from `images` and `last_images`
  (named in the .txt beside the previews; a last image may be "").
  Prompt i always starts from the noise of (seed, i), so previews of different steps differ only
  by what training changed. out_dir/step_<step:06d>.txt names each file's prompt and the settings.
  Every file is written atomically. Returns the media paths in prompt order. `progress` shows a
  bar over every sampling step of every prompt (a preview on the CPU takes minutes). `stem`
  replaces "step_<step:06d>" in the file names (the sampling command: no training step).
  """
  if len(prompts) != len(contexts):
    raise ValueError(f"{len(prompts)} prompts but {len(contexts)} contexts")
  conditions = list(conditions) if conditions is not None else [None] * len(prompts)
  if len(conditions) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(conditions)} conditions")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  _check_size(height, width, num_frames, vae)
  g = _as_guidance(guidance)
  cfg = vae.config
  latent_shape = (1, (num_frames - 1) // cfg.temporal_factor + 1, height // cfg.spatial_factor,
                  width // cfg.spatial_factor, cfg.z_dim)
  # One context length for every prompt, so the step function compiles once.
  batches = [_as_batch(c) for c in contexts]
  if negative_context is not None:
    negative_context = _as_batch(negative_context)
  length = max([c.shape[1] for c in batches]
               + ([negative_context.shape[1]] if negative_context is not None else []), default=0)
  out_dir = Path(out_dir)
  suffix = ".png" if num_frames == 1 else ".mp4"
  base = jax.random.key(seed)
  paths = []
  name = stem if stem is not None else f"step_{step:06d}"
  bar = tqdm.tqdm(total=len(batches) * num_steps, unit="step", disable=not progress,
                  desc=f"previews at step {step}" if stem is None else "sampling",
                  leave=stem is not None)
  for i, context in enumerate(batches):
    if context.shape[0] != 1:
      raise ValueError(f"context {i} must hold one prompt, got {context.shape}")
    latents = sample_latents(model, _pad_rows(context, length), negative_context, latent_shape,
                             jax.random.fold_in(base, i), num_steps=num_steps, shift=shift,
                             guidance=g, batch_cfg=batch_cfg, condition=conditions[i],
                             on_step=(lambda: bar.update(1)) if progress else None, task=task)
    frames = media_out.to_uint8(np.asarray(decode_latents(vae, latents))[0])
    path = out_dir / f"{name}_{i}{suffix}"
    if num_frames == 1:
      media_out.write_png(frames[0], path)
    else:
      media_out.write_video(frames, path, fps=fps)
    paths.append(path)
    log.info("preview %s: %s", path, prompts[i])
  bar.close()
  settings = (f"{width}x{height}, {num_frames} frames, {num_steps} Euler steps, shift {shift}, "
              f"guidance low/high {g.low_noise}/{g.high_noise}, seed {seed}")
  lasts = list(last_images or []) or [""] * len(prompts)
  described = ([f"{p}\t(from {img}{f' to {last}' if last else ''})" if img else p
                for p, img, last in zip(prompts, images, lasts)] if images else prompts)
  header = f"step {step}" if stem is None else name
  media_out.write_text(_describe(header, described, paths, settings), out_dir / f"{name}.txt")
  return paths

"""Rendering prompts with both experts and their LoRA files, outside training: the preview
sampler (`render_previews`: Euler, classifier-free guidance per expert) on a run's config.

Prompts are encoded with umT5 directly and trimmed to their tokens, as the prompt cache stores
them, so a run's preview prompt gets the context its previews got. Everything is a pure function
of the arguments: the same call gives the same pixels (the noise of prompt i is
fold_in(key(seed), i)).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.prompts import encode_tokens, tokenize
from wan_jax.sampling.loras import apply_lora, check_made_for
from wan_jax.train.outputs.preview import Guidance, preview_conditions, render_previews
from wan_jax.train.run import loading
from wan_jax.train.step.expert_schedule import HIGH, LOW


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one sampling call renders (the run's `preview` block, overridable)."""

  height: int
  width: int
  num_frames: int
  num_steps: int
  shift: float
  guidance: Guidance
  seed: int
  negative_prompt: str = ""

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, **overrides) -> "Settings":
    p = cfg.preview
    base = cls(int(p.height), int(p.width), int(p.num_frames), int(p.num_steps), float(p.shift),
               Guidance(float(p.guidance_low_noise), float(p.guidance_high_noise)), int(p.seed),
               str(p.negative_prompt))
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def encode(prompts: Sequence[str], enc: loading.Encoders) -> list[jax.Array]:
  """[1, tokens, D] float32 per prompt, trimmed to its tokens (what the prompt cache holds)."""
  tokenizer, encoder = enc.load_text()
  ids, mask = tokenize(list(prompts), tokenizer, enc.text_len)
  emb = np.asarray(encode_tokens(encoder, jnp.asarray(ids), jnp.asarray(mask)), np.float32)
  return [jnp.asarray(emb[i:i + 1, :max(1, int(mask[i].sum()))]) for i in range(len(prompts))]


def load_dual(cfg: ml_collections.ConfigDict, loras: dict[str, Path]) -> DualWanTransformer:
  """Both experts as `cfg` loads them, each with its LoRA file (an expert without one runs as
  released). Files are checked against the model before the experts load."""
  for path in loras.values():
    check_made_for(path, str(cfg.model.arch))
  experts = {}
  for expert in loading.variant(cfg).experts:  # both, or the one model of a one-model release
    experts[expert] = loading.load_expert(cfg, expert, remat="none")
    if expert in loras:
      apply_lora(experts[expert], loras[expert])
  return DualWanTransformer(experts[HIGH], experts.get(LOW, experts[HIGH]),
                            float(cfg.model.boundary))


def sample(cfg: ml_collections.ConfigDict, loras: dict[str, Path], prompts: Sequence[str],
           images: Sequence[str], out_dir: Path, settings: Settings, *,
           last_images: Sequence[str] = (), progress: bool = False) -> list[Path]:
  """Renders each prompt to out_dir/sample_seed<seed>_<i>.mp4 (.png for one frame) and names
  prompts and settings in out_dir/sample_seed<seed>.txt. `images`: one start image per prompt
  for an image-to-video model, none for text-to-video; `last_images`: none, or one per prompt
  (a path, or "" for none), the frame each clip ends on (first-last frame)."""
  task = loading.task(cfg)
  if task.needs_preview_images and len(images) != len(prompts):
    raise ValueError(f"{task.title} needs one start image per prompt: {len(prompts)} prompts, "
                     f"{len(images)} images")
  if images and len(images) != len(prompts):  # optional images (TI2V-5B): one or "" each
    raise ValueError(f"{len(prompts)} prompts but {len(images)} start images (one per prompt, "
                     "or none)")
  if not task.takes_preview_images and images:
    raise ValueError(f"{cfg.model.arch} is a {task.title} model: it takes no start image")
  if not task.first_last_arrays and any(last_images):
    raise ValueError(f"{cfg.model.arch} is a {task.title} model: it takes no last image")
  if last_images and len(last_images) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(last_images)} last images (one per "
                     "prompt, or none)")
  if any(last_images) and settings.num_frames < 5:
    raise ValueError(f"a last image needs 5 or more frames, got {settings.num_frames}")
  for image in images:
    if image and not Path(image).is_file():
      raise FileNotFoundError(f"start image {image} does not exist")
  for image in last_images:
    if image and not Path(image).is_file():
      raise FileNotFoundError(f"last image {image} does not exist")
  dual = load_dual(cfg, loras)
  with tempfile.TemporaryDirectory() as scratch:  # the tiny demo's tokenizer, written on use
    enc = loading.encoders(cfg, Path(scratch))
    contexts = encode([*prompts, settings.negative_prompt], enc)
  negative = contexts.pop()
  vae = enc.load_vae()
  s = settings
  conditions = preview_conditions(task, vae, images, last_images, s.height, s.width,
                                  s.num_frames)
  out_dir.mkdir(parents=True, exist_ok=True)
  return render_previews(dual, vae, list(prompts), contexts, negative, out_dir, 0,
                         height=s.height, width=s.width, num_frames=s.num_frames,
                         num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, seed=s.seed,
                         conditions=conditions, images=list(images) or None,
                         last_images=list(last_images) or None, progress=progress,
                         stem=f"sample_seed{s.seed}", task=task,
                         fps=int(cfg.preview.get("fps", loading.variant(cfg).preview.fps)))

"""The metadata of every LoRA (or full-weights) file a run exports: what model hubs, LoRA
managers and ComfyUI nodes read to name the base model, and what the run trained.

Stability AI's ModelSpec fields (`modelspec.*`, version 1.0.0, written the same way by kohya's
sd-scripts and musubi-tuner, OneTrainer and ComfyUI's own savers): the architecture names the
base model and, for Wan 2.2 A14B, the expert ("wan-2.2-t2v-a14b-high-noise/lora"; "/lora" only
on adapters; "i2v" for image-to-video archs), the title comes from `save.name`, and the
timestep range is the expert's. Besides them: `step` is the global training step (the same in a
numbered file and in the final one written at the end), `expert_step` the expert's own count of
applied updates, and the training shape (resolutions, frame counts, buckets, items). The rank,
alpha and targets of a LoRA are written by export.save_lora (`lora_rank`, `lora_alpha`,
`lora_targets`). Every value is a string, as safetensors requires.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

import ml_collections

from wan_jax.data.config import resolutions
from wan_jax.model.flow_matching import expert_range
from wan_jax.variants import get_variant

MODELSPEC_VERSION = "1.0.0"
IMPLEMENTATION = "https://github.com/Wan-Video/Wan2.2"  # the key layout the files use


def base_architecture(arch: str) -> str:
  """model.arch -> the ModelSpec id of the base model (the variant's), e.g. "wan22_t2v_a14b" ->
  "wan-2.2-t2v-a14b", "tiny" -> "wan-2.2-t2v-tiny" (the CPU demo)."""
  return get_variant(arch).modelspec


def architecture(arch: str, expert: str, lora: bool) -> str:
  """The `modelspec.architecture` of one expert's file, e.g. "wan-2.2-t2v-a14b-low-noise/lora";
  a one-expert model's has no expert part."""
  variant = get_variant(arch)
  noise = "" if variant.single_expert else "-" + variant.expert_name(expert).replace("_", "-")
  return f"{variant.modelspec}{noise}" + ("/lora" if lora else "")


def weights_metadata(cfg: ml_collections.ConfigDict, expert: str, *, step: int, expert_step: int,
                     buckets: Sequence[tuple[int, int, int]] = (), num_items: int = 0,
                     date: datetime.datetime | None = None) -> dict[str, str]:
  """The metadata of `expert`'s file ("high" or "low") at global step `step`.

  buckets are the (frames, height, width) trained; num_items the media files trained on.
  """
  lora = bool(cfg.lora.enabled)
  name = get_variant(cfg.model.arch).expert_name(expert)
  noise = name.replace("_", "-")
  low, high = expert_range(expert, float(cfg.model.boundary))
  sizes = sorted({r for ds in cfg.datasets for r in resolutions(ds)})
  buckets = sorted({tuple(int(v) for v in b) for b in buckets})
  if buckets:
    _, h, w = max(buckets, key=lambda b: (b[1] * b[2], b))
    resolution = f"{w}x{h}"
  else:
    resolution = f"{sizes[-1]}x{sizes[-1]}" if sizes else ""
  base = base_architecture(str(cfg.model.arch))
  kind = "LoRA" if lora else "fine-tuned weights"
  triggers = sorted({str(ds.get("trigger_word", "")) for ds in cfg.datasets} - {""})
  when = (date or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
  meta = {
      "modelspec.sai_model_spec": MODELSPEC_VERSION,
      "modelspec.architecture": architecture(str(cfg.model.arch), expert, lora),
      "modelspec.implementation": IMPLEMENTATION,
      "modelspec.title": f"{cfg.save.name} ({noise} expert)",
      "modelspec.description": (
          f"{kind} for the {noise} expert of {base} (timesteps {low:g}-{high:g}): load it on "
          f"that expert's model. Trained with wan-jax: global step {step} of "
          f"{int(cfg.train.steps)}, {expert_step} updates of this expert."),
      "modelspec.date": when.isoformat(),
      "modelspec.resolution": resolution,
      "modelspec.timestep_range": f"{low:g},{high:g}",
      "step": str(int(step)),
      "expert_step": str(int(expert_step)),
      "expert": name,
      "train_steps": str(int(cfg.train.steps)),
      "resolutions": json.dumps(sizes),
      "num_frames": json.dumps(sorted({b[0] for b in buckets})),
      "buckets": json.dumps([list(b) for b in buckets]),
      "num_items": str(int(num_items)),
      "wan_jax_train_config": cfg.to_json(),
  }
  if triggers:
    meta["modelspec.trigger_phrase"] = ", ".join(triggers)
  if resolution == "":
    del meta["modelspec.resolution"]
  return meta

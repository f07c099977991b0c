"""Which task a transformer expert serves, and which released model it is.

Tasks: text-to-video ("t2v"), image-to-video ("i2v") and TI2V-5B's text-and-image-to-video
("ti2v"). The weights decide: the patch embedding of a T2V expert takes the 16 noisy latents, an
I2V expert's takes 36 (the latents, 4 mask channels, 16 latents of the conditioning video), and
TI2V-5B's takes 48 and gives 48 (the Wan 2.2 VAE's latents; its image replaces the first latent
frame, so no extra channels). A release's config.json, where there is one, must say the same
(official Wan 2.2: `model_type` "t2v" / "i2v" / "ti2v" and `in_dim`; diffusers: `in_channels`),
and both experts of a release must serve the same task.

Models: the release an expert's architecture is ("t2v_a14b", "i2v_a14b", "ti2v_5b": the names of
wan_jax.model.config.PRESETS), from its width and channels; None for other sizes (tests, custom
models). Converted manifests record it per expert ("model").
"""

from __future__ import annotations

from typing import Any

from wan_jax.model.config import I2V_CONDITION_CHANNELS, PRESETS, WanConfig, ti2v_5b
from wan_jax.model.flow_matching import I2V_BOUNDARY, T2V_BOUNDARY
from wan_jax.weights.safetensors_reader import CheckpointError

TASK_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video",
              "ti2v": "text-image-to-video (TI2V-5B)"}
# The expert switch of each A14B release (Wan2.2 wan/configs/wan_{t2v,i2v}_A14B.py `boundary`;
# diffusers' Wan 2.2 pipelines `boundary_ratio`): t >= boundary * 1000 -> the high-noise expert.
# TI2V-5B is one transformer: no boundary.
BOUNDARIES = {"t2v": T2V_BOUNDARY, "i2v": I2V_BOUNDARY}
# Other Wan 2.2 model types (official config.json `model_type`) and why they are not converted.
UNSUPPORTED_MODEL_TYPES = {"s2v": "Wan 2.2 S2V-14B (speech-to-video)"}
TI2V_CHANNELS = ti2v_5b().out_channels  # 48: the Wan 2.2 VAE's latents, in and out
# The released models, by (dim, in_channels, out_channels) of their presets.
RELEASED_MODELS = ("t2v_a14b", "i2v_a14b", "ti2v_5b")
_MODEL_BY_SHAPE = {(c.dim, c.in_channels, c.out_channels): name
                   for name in RELEASED_MODELS for c in [PRESETS[name]()]}


def task_of_config(cfg: WanConfig) -> str:
  """"t2v", "i2v" or "ti2v" from the architecture alone (the channels in and out)."""
  extra = cfg.condition_channels
  if extra == 0:
    return "ti2v" if cfg.out_channels == TI2V_CHANNELS else "t2v"
  if extra == I2V_CONDITION_CHANNELS:
    return "i2v"
  raise CheckpointError(
      f"the patch embedding takes {cfg.in_channels} input channels for {cfg.out_channels} output "
      f"channels: neither text-to-video ({cfg.out_channels}), image-to-video "
      f"({cfg.out_channels + I2V_CONDITION_CHANNELS}) nor TI2V-5B ({TI2V_CHANNELS} in and out)")


def model_of_config(cfg: WanConfig) -> str | None:
  """"t2v_a14b", "i2v_a14b" or "ti2v_5b" (a PRESETS name) when the width and channels are a
  release's; None for other sizes. (Wan 2.1 T2V-14B has T2V-A14B's shapes: "t2v_a14b".)"""
  return _MODEL_BY_SHAPE.get((cfg.dim, cfg.in_channels, cfg.out_channels))


def model_of_entry(entry: dict[str, Any]) -> str | None:
  """The model of a converted expert's manifest entry (older entries have only the config)."""
  if "model" in entry:
    return entry["model"]
  return model_of_config(WanConfig.from_arch_dict(entry["config"]))


def task_of_entry(entry: dict[str, Any]) -> str:
  """The task of a converted expert's manifest entry (entries written before tasks were
  recorded have only their architecture)."""
  return entry.get("task") or task_of_config(WanConfig.from_arch_dict(entry["config"]))


def check_declared(declared: dict[str, Any], cfg: WanConfig, where: str) -> str:
  """The task of an expert whose weights give `cfg`, checked against its config.json
  (`declared`, {} when there is none); a disagreement is one line naming `where`."""
  model_type = declared.get("model_type")
  if model_type in UNSUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{where}: config.json says model_type {model_type!r}: "
                          f"{UNSUPPORTED_MODEL_TYPES[model_type]} is not supported; wan-jax "
                          "converts the A14B text-to-video and image-to-video experts and "
                          "TI2V-5B")
  if model_type is not None and model_type not in TASK_NAMES:
    raise CheckpointError(f"{where}: config.json says model_type {model_type!r}; expected "
                          f"one of {sorted(TASK_NAMES)}")
  in_channels = declared.get("in_dim", declared.get("in_channels"))
  if in_channels is not None and in_channels != cfg.in_channels:
    raise CheckpointError(f"{where}: config.json says {in_channels} input channels but the "
                          f"patch embedding takes {cfg.in_channels}")
  try:
    task = task_of_config(cfg)
  except CheckpointError as e:
    raise CheckpointError(f"{where}: {e}") from None
  if model_type is not None and model_type != task:
    raise CheckpointError(f"{where}: config.json says model_type {model_type!r} but the patch "
                          f"embedding takes {cfg.in_channels} input channels, which is "
                          f"{TASK_NAMES[task]} ({task!r})")
  return task


def common_task(where: str, tasks: dict[str, str]) -> str:
  """The one task of several experts ({name: task}); experts of different tasks are refused."""
  if not tasks:
    raise CheckpointError(f"{where} holds no transformer expert")
  if len(set(tasks.values())) > 1:
    said = ", ".join(f"{name} is {TASK_NAMES[t]}" for name, t in tasks.items())
    raise CheckpointError(f"{where}: the experts serve different tasks ({said}); the experts "
                          "must come from one release (T2V-A14B, I2V-A14B or TI2V-5B)")
  return next(iter(tasks.values()))

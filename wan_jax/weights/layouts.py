"""What a checkpoint is, from its tensor names alone: one interface over the three key maps.

Each key module (transformer_keys, vae_keys, umt5_keys) answers `layout_of(keys)` with a `Layout`
or None; `components.detect` asks them in turn. A new component (another VAE, another text
encoder) is one key module with `layout_of` and one entry in `components.DETECTORS`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layout:
  """A component's kind and the naming of its keys."""

  component: str  # "transformer" | "vae" | "text_encoder"
  naming: str  # transformer: "original" | "diffusers"; vae: "original" | "diffusers";
  #              text_encoder: "wan" | "hf"
  prefix: str = ""  # stripped from every key first (ComfyUI's "model.diffusion_model.")

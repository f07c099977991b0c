"""Model FLOPs of one training step of a Wan expert, and MFU (the counting of performance.md).

2 FLOP per multiply-add. Counted: the matmuls of the base model's linears and of attention
(q k^T and p v). Not counted: norms, activations, RoPE, the loss, the optimizer, the LoRA
adapters' thin matmuls (~1.3% at rank 32) and recomputation under gradient checkpointing, which
is a cost, not useful work. So MFU compares across remat policies and with other trainers.

A LoRA step needs no base-weight gradients: forward plus input gradients for the linears (x2),
forward plus the two-matmul backward of attention (x3). A full fine-tune is x3 throughout.

Per-token timesteps (TI2V-5B: t = 0 on the conditioning frame) make the per-token modulation
elementwise work (uncounted, as before), but the time MLP then runs once per token instead of
once per sample: `per_token_timesteps=True` counts it so (+1.5% of the 5B's linears).
Token counts take the variant's latent geometry (the TI2V-5B's Wan 2.2 VAE compresses 4x16x16,
the A14B's Wan 2.1 VAE 4x8x8).
"""

from __future__ import annotations

import dataclasses

from wan_jax.model.config import WanConfig
from wan_jax.model.latent_geometry import WAN21, LatentGeometry

def latent_grid(frames: int, height: int, width: int,
                geometry: LatentGeometry = WAN21) -> tuple[int, int, int]:
  """(F, H, W) of the latents of a clip (an image is frames=1)."""
  if not geometry.frames_ok(frames):
    raise ValueError(f"frames must be {geometry.temporal}k+1 (1 for an image), got {frames}")
  if height % geometry.spatial or width % geometry.spatial:
    raise ValueError(f"height and width must be multiples of {geometry.spatial}, got "
                     f"{height}x{width}")
  return geometry.grid(frames, height, width)


def token_count(cfg: WanConfig, frames: int, height: int, width: int,
                geometry: LatentGeometry = WAN21) -> int:
  """Video tokens the transformer sees: the latent grid (the A14B's Wan 2.1 VAE by default; a
  variant's own: wan_jax.variants.get_variant(arch).geometry) divided by the patch size."""
  grid = latent_grid(frames, height, width, geometry)
  if any(g % p for g, p in zip(grid, cfg.patch_size)):
    raise ValueError(f"latent grid {grid} does not divide by the patch size {cfg.patch_size}")
  f, h, w = (g // p for g, p in zip(grid, cfg.patch_size))
  return f * h * w


def linear_flops_per_token(cfg: WanConfig) -> int:
  """Forward FLOPs of the linears applied to every video token (~23.9e9 for the 14B expert).

  Per block: self-attention q, k, v, o and cross-attention q, o (d x d each) and the FFN
  (d x ffn, ffn x d); once per model: the patch embedding and the head. Cross-attention k, v
  read the text rows, not the tokens: they are in `context_linear_flops`.
  """
  d = cfg.dim
  block = 6 * d * d + 2 * d * cfg.ffn_dim
  patches = cfg.patch_volume
  ends = patches * cfg.in_channels * d + d * cfg.out_channels * patches
  return 2 * (cfg.num_layers * block + ends)


def time_mlp_flops(cfg: WanConfig) -> int:
  """Forward FLOPs of the time MLP for one timestep: freq -> d -> d, then d -> 6d."""
  d = cfg.dim
  return 2 * (cfg.freq_dim * d + d * d + d * 6 * d)


def context_linear_flops(cfg: WanConfig, *, per_token_timesteps: bool = False) -> int:
  """Forward FLOPs of the linears run once per sample, whatever the token count: the text
  embedding and every block's cross-attention k, v over the text_len padded rows, and the
  time MLP (unless it runs per token). About 2.2e12 for the 14B expert (the per-token linears
  at 480p: 7.8e14)."""
  d, rows = cfg.dim, cfg.text_len
  text = rows * (cfg.text_dim * d + d * d)
  cross_kv = cfg.num_layers * 2 * rows * d * d
  return 2 * (text + cross_kv) + (0 if per_token_timesteps else time_mlp_flops(cfg))


def self_attention_flops(cfg: WanConfig, tokens: int) -> int:
  """q k^T and p v over all heads and blocks: 4 N^2 d L."""
  return 4 * tokens * tokens * cfg.dim * cfg.num_layers


def cross_attention_flops(cfg: WanConfig, tokens: int) -> int:
  """The same against the text_len context rows: 4 N text_len d L."""
  return 4 * tokens * cfg.text_len * cfg.dim * cfg.num_layers


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """The forward's linear and attention FLOPs of one step, and the step's model FLOPs."""

  tokens: int
  batch: int
  lora: bool
  linear: int     # forward, all samples
  attention: int  # forward, self + cross, all samples

  @property
  def forward(self) -> int:
    return self.linear + self.attention

  @property
  def step(self) -> int:
    if self.lora:
      return 2 * self.linear + 3 * self.attention
    return 3 * (self.linear + self.attention)


def step_flops(cfg: WanConfig, tokens: int, *, lora: bool = True, batch: int = 1,
               per_token_timesteps: bool = False) -> StepFlops:
  """Model FLOPs of one training step on `batch` samples of `tokens` video tokens each;
  per_token_timesteps: the model was given a timestep per latent position (TI2V-5B)."""
  if tokens < 1 or batch < 1:
    raise ValueError(f"tokens and batch must be >= 1, got {tokens} and {batch}")
  per_token = linear_flops_per_token(cfg) + (time_mlp_flops(cfg) if per_token_timesteps else 0)
  linear = (per_token * tokens
            + context_linear_flops(cfg, per_token_timesteps=per_token_timesteps))
  attention = self_attention_flops(cfg, tokens) + cross_attention_flops(cfg, tokens)
  return StepFlops(tokens, batch, lora, batch * linear, batch * attention)


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
  """Model FLOPs utilisation: the fraction of the peak rate the step's useful work ran at."""
  if seconds <= 0 or peak_flops_per_s <= 0:
    raise ValueError(f"seconds and peak must be positive, got {seconds} and {peak_flops_per_s}")
  return flops / seconds / peak_flops_per_s

"""The PyTorch peer of our train step, timed the same way: diffusers' WanTransformer3DModel with
SDPA attention, gradient checkpointing and a peft LoRA on the same ten linears per block, the
same masked flow-matching loss, AdamW on the adapters.

This is the path the PyTorch Wan trainers share (no torch.compile, as they run by default), so
`train_step.py --torch` puts ours and theirs side by side on one device in one process.
Weights are random (diffusers' own initialisation), never zeros.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from peft import LoraConfig

from wan_jax.model.config import WanConfig
from wan_jax.model.lora import DEFAULT_TARGETS
from wan_jax.weights.transformer_keys import to_diffusers_key

NUM_TRAIN_TIMESTEPS = 1000.0


def diffusers_targets(targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
  """Our LoRA target names (original Wan names) as diffusers module names, e.g. attn1.to_q."""
  prefix, suffix = "blocks.0.", ".weight"
  return [to_diffusers_key(f"{prefix}{t}{suffix}")[len(prefix):-len(suffix)] for t in targets]


def diffusers_config(cfg: WanConfig) -> dict[str, Any]:
  """WanTransformer3DModel's constructor arguments for the same architecture."""
  return {"patch_size": tuple(cfg.patch_size), "num_attention_heads": cfg.num_heads,
          "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_channels,
          "out_channels": cfg.out_channels, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
          "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "cross_attn_norm": True,
          "qk_norm": "rms_norm_across_heads", "eps": cfg.eps,
          "rope_max_seq_len": cfg.rope_max_positions}


def build_model(cfg: WanConfig, *, rank: int, alpha: float, dtype: torch.dtype,
                device: torch.device, checkpointing: bool = True,
                seed: int = 0) -> tuple[WanTransformer3DModel, list[torch.nn.Parameter]]:
  """(model, adapter parameters). Built directly on `device` in `dtype` (a 14B model never
  exists in fp32), then as diffusers loads it: `_keep_in_fp32_modules` in fp32; adapters in
  fp32 as diffusers' training scripts keep them (`cast_training_params`)."""
  torch.manual_seed(seed)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    with torch.device(device):
      model = WanTransformer3DModel(**diffusers_config(cfg))
  finally:
    torch.set_default_dtype(previous)
  keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
  for name, param in model.named_parameters():
    if any(k in name.split(".") for k in keep):
      param.data = param.data.float()
  model.requires_grad_(False)
  model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                               target_modules=diffusers_targets()))
  params = [p for p in model.parameters() if p.requires_grad]
  for p in params:
    p.data = p.data.float()
  if checkpointing:
    model.enable_gradient_checkpointing()
  model.train()
  return model, params


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
               multiplier: torch.Tensor) -> torch.Tensor:
  """The reduction of `wan_jax.train.step.objective.masked_mse`, channels first: [B, C, F, H, W]."""
  err = pred.float() - target
  w = weights[:, None].expand_as(err)
  weighted = (w * err.square()).flatten(1).sum(1)
  weight_sum = weights.flatten(1).sum(1)
  has = weight_sum > 0
  per_item = torch.where(has, weighted / (err.shape[1] * torch.where(has, weight_sum, 1.0)), 0.0)
  per_item = per_item * multiplier
  return per_item.sum() / has.float().sum().clamp(min=1.0)


class Step:
  """One LoRA training step on a fixed batch: posterior sample, timestep, noise, loss, update."""

  def __init__(self, model: WanTransformer3DModel, params: list[torch.nn.Parameter],
               batch: dict[str, np.ndarray], *, dtype: torch.dtype,
               latents_mean: tuple[float, ...],
               latents_std: tuple[float, ...], t_range: tuple[float, float],
               learning_rate: float = 1e-4, max_grad_norm: float = 1.0, seed: int = 0):
    self.model, self.params, self.max_grad_norm = model, params, max_grad_norm
    device = params[0].device
    self.dtype = dtype  # the base weights' dtype, which the model's inputs take
    cf = lambda k: torch.from_numpy(np.moveaxis(batch[k], -1, 1).copy()).to(device)  # [B,C,F,H,W]
    self.mean, self.logvar = cf("latent_mean"), cf("latent_logvar")
    self.weights = torch.from_numpy(batch["weights"]).to(device)
    self.multiplier = torch.from_numpy(batch["loss_multiplier"]).to(device)
    self.context = torch.from_numpy(batch["context"]).to(device, self.dtype)
    shape = (1, -1, 1, 1, 1)
    self.norm_mean = torch.tensor(latents_mean, device=device).reshape(shape)
    self.norm_std = torch.tensor(latents_std, device=device).reshape(shape)
    self.t_low, self.t_high = t_range
    self.gen = torch.Generator(device).manual_seed(seed)
    self.opt = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)

  def __call__(self) -> torch.Tensor:
    randn = lambda t: torch.randn(t.shape, generator=self.gen, device=t.device, dtype=t.dtype)
    z = self.mean + torch.exp(0.5 * self.logvar) * randn(self.mean)
    x0 = (z - self.norm_mean) / self.norm_std
    b = x0.shape[0]
    t = self.t_low + (self.t_high - self.t_low) * torch.rand(
        b, generator=self.gen, device=x0.device)
    s = (t / NUM_TRAIN_TIMESTEPS).reshape(b, 1, 1, 1, 1)
    noise = randn(x0)
    x_t = (1 - s) * x0 + s * noise
    pred = self.model(x_t.to(self.dtype), t, self.context, return_dict=False)[0]
    loss = masked_mse(pred, noise - x0, self.weights, self.multiplier)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_steps(step: Step, *, steps: int, warmup: int) -> dict[str, Any]:
  """First step (allocator and kernel-choice warm-up), then `warmup` more, then `steps` timed
  with a device sync around each; median and peak device memory."""
  device = step.params[0].device
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  sync(device)
  start = time.perf_counter()
  loss = step()
  sync(device)
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    sync(device)
    start = time.perf_counter()
    loss = step()
    sync(device)
    times.append(time.perf_counter() - start)
  peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
  return {"first_step_s": first_s, "step_s": times, "median_s": statistics.median(times),
          "peak_memory_gib": peak, "loss": float(loss)}


def release() -> None:
  """Hands cached device memory back once the caller has dropped the model and step, so the
  JAX half of the run finds the device empty."""
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def versions() -> dict[str, str]:
  import diffusers
  import peft
  return {"torch_version": torch.__version__, "diffusers_version": diffusers.__version__,
          "peft_version": peft.__version__}

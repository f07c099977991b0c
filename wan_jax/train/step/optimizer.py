"""The optimizer from the config: AdamW with warmup then constant or cosine, clipping and
gradient accumulation. One instance per trained expert, so alternating experts never mixes
their moments and an idle expert's weights never move."""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("constant", "cosine")


def learning_rate(train: ml_collections.ConfigDict, batches: int | None = None) -> optax.Schedule:
  """Per optimizer update (one per grad_accum batches): linear warmup, then constant or cosine to 0."""
  if train.lr_schedule not in SCHEDULES:
    raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {train.lr_schedule!r}")
  peak, warmup = float(train.learning_rate), int(train.warmup_steps)
  # An expert's optimizer counts only its own updates: `batches` is how many it trains on
  # (default: all of train.steps, i.e. one expert).
  batches = int(train.steps) if batches is None else int(batches)
  updates = max(1, batches // max(1, int(train.grad_accum)))
  after = (optax.constant_schedule(peak) if train.lr_schedule == "constant" else
           optax.cosine_decay_schedule(peak, max(1, updates - warmup)))
  if warmup <= 0:
    return after
  ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1 else (
      optax.constant_schedule(peak))
  return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(train: ml_collections.ConfigDict,
                   batches: int | None = None) -> optax.GradientTransformation:
  if int(train.grad_accum) < 1:
    raise ValueError("train.grad_accum must be >= 1")
  parts = []
  if float(train.max_grad_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(train.max_grad_norm)))
  parts.append(optax.adamw(learning_rate(train, batches), b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=float(train.weight_decay)))
  tx = optax.chain(*parts)
  if int(train.grad_accum) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(train.grad_accum))
  return tx

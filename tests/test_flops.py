"""Model FLOPs: the figures of performance.md, and the per-token count against the program.

The independent count walks the jaxpr of one tiny forward (attention "xla", so attention is two
batched einsums) and sums 2 * output size * contracted size over every dot_general, loops
unrolled. Dots with batch dimensions are attention; the others are the linears.
"""

from __future__ import annotations

import math

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import pytest
from flax import nnx

import wan_jax
from wan_jax.model.config import ti2v_5b, tiny_ti2v
from wan_jax.variants import get_variant
import flops

A14B = wan_jax.t2v_a14b()


@pytest.mark.parametrize("shape, tokens, pflop", [
    ((81, 480, 832), 32_760, 4.2),
    ((81, 720, 1280), 75_600, 17.7),
    ((1, 1024, 1024), 4_096, 0.25),
])
def test_lora_step_figures(shape, tokens, pflop):
  n = flops.token_count(A14B, *shape)
  assert n == tokens
  assert flops.step_flops(A14B, n).step / 1e15 == pytest.approx(pflop, rel=0.03)


def test_14b_linears_and_attention_terms():
  assert flops.linear_flops_per_token(A14B) == pytest.approx(23.9e9, rel=0.005)
  n = 32_760
  assert flops.self_attention_flops(A14B, n) == 4 * n * n * 5120 * 40
  assert flops.cross_attention_flops(A14B, n) / n == pytest.approx(0.42e9, rel=0.01)
  fwd = flops.step_flops(A14B, n)
  assert fwd.forward / 1e15 == pytest.approx(1.67, rel=0.01)  # wan22_spec.md section 7
  assert fwd.attention / fwd.forward == pytest.approx(0.53, abs=0.01)


def test_ti2v_5b_against_a_hand_count():
  """TI2V-5B at 121 frames of 704x1280 (its Wan 2.2 VAE: 4x16x16), a timestep per token."""
  cfg = ti2v_5b()
  n = flops.token_count(cfg, 121, 704, 1280, get_variant("wan22_ti2v_5b").geometry)
  assert n == 31 * 22 * 40  # the 4x16x16 VAE, patch 1x2x2
  # Per token per block: q, k, v, o, cross q, o (6 x 3072^2) and the FFN (2 x 3072 x 14336);
  # the patch embedding (48 x 4 -> 3072) and head (3072 -> 48 x 4) once; and, per token here,
  # the time MLP (256 -> 3072 -> 3072 -> 6 x 3072). 2 FLOP per multiply-add.
  per_token = 2 * (30 * (6 * 3072**2 + 2 * 3072 * 14336) + 2 * 192 * 3072)
  time_mlp = 2 * (256 * 3072 + 3072**2 + 6 * 3072**2)
  once = 2 * (512 * (4096 * 3072 + 3072**2) + 30 * 2 * 512 * 3072**2)  # text, cross k/v
  attention = 4 * n * n * 3072 * 30 + 4 * n * 512 * 3072 * 30
  assert (per_token, time_mlp) == (8_684_568_576, 133_693_440)
  fwd = flops.step_flops(cfg, n, per_token_timesteps=True)
  assert (fwd.linear, fwd.attention) == ((per_token + time_mlp) * n + once, attention)
  plain = flops.step_flops(cfg, n)  # one timestep per sample: the time MLP runs once
  assert fwd.linear - plain.linear == time_mlp * (n - 1)


def test_full_finetune_and_batch():
  one = flops.step_flops(A14B, 4096, lora=False)
  assert one.step == 3 * (one.linear + one.attention)
  two = flops.step_flops(A14B, 4096, lora=False, batch=2)
  assert two.step == 2 * one.step
  assert flops.step_flops(A14B, 4096).step < one.step


def test_token_count_and_errors():
  assert flops.latent_grid(81, 480, 832) == (21, 60, 104)
  assert flops.token_count(wan_jax.tiny(), 9, 64, 96) == 3 * 4 * 6
  with pytest.raises(ValueError, match="4k\\+1"):
    flops.latent_grid(80, 480, 832)
  with pytest.raises(ValueError, match="multiples of 8"):
    flops.latent_grid(81, 484, 832)
  with pytest.raises(ValueError, match="patch"):
    flops.token_count(A14B, 1, 8, 16)  # a 1x2 latent grid cannot hold a 2x2 patch
  with pytest.raises(ValueError):
    flops.mfu(1.0, 0.0, 1.0)
  assert flops.mfu(4e15, 10.0, 8e14) == pytest.approx(0.5)


def _sub_jaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jcore.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jcore.Jaxpr):
        yield item


def dot_flops(jaxpr: jcore.Jaxpr) -> tuple[int, int]:
  """(linear, attention) FLOPs of every dot_general in `jaxpr`, scans unrolled."""
  linear = attention = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    assert name not in ("cond", "while"), f"cannot count through {name}"
    if name == "dot_general":
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      count = 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
      if batch:
        attention += count
      else:
        linear += count
    times = eqn.params["length"] if name == "scan" else 1
    for sub in _sub_jaxprs(eqn.params):
      sub_linear, sub_attention = dot_flops(sub)
      linear += times * sub_linear
      attention += times * sub_attention
  return linear, attention


def program_dot_flops(cfg: wan_jax.WanConfig, grid: tuple[int, int, int],
                      per_token_timesteps: bool = False) -> tuple[int, int]:
  graphdef, state = nnx.split(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  x = jnp.ones((1, *grid, cfg.in_channels), jnp.float32)
  t = jnp.full((1, *grid) if per_token_timesteps else (1,), 500.0)
  context = jnp.ones((1, 7, cfg.text_dim), jnp.float32)
  closed = jax.make_jaxpr(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))(state, x, t, context)
  return dot_flops(closed.jaxpr)


def test_tiny_counts_match_the_program():
  cfg = wan_jax.tiny(attention="xla")
  counts = {}
  for grid in ((2, 4, 6), (3, 6, 10)):
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    counts[tokens] = program_dot_flops(cfg, grid)
    linear, attention = counts[tokens]
    assert attention == (flops.self_attention_flops(cfg, tokens)
                         + flops.cross_attention_flops(cfg, tokens))
    assert linear == flops.linear_flops_per_token(cfg) * tokens + flops.context_linear_flops(cfg)
  (n1, (l1, _)), (n2, (l2, _)) = sorted(counts.items())
  assert (l2 - l1) // (n2 - n1) == flops.linear_flops_per_token(cfg)  # the per-token slope alone


def test_per_token_timesteps_count_matches_the_program():
  """A timestep per latent position runs the time MLP per token; nothing else changes."""
  cfg = tiny_ti2v(attention="xla")
  grid = (3, 6, 10)
  tokens = 3 * 3 * 5
  linear, attention = program_dot_flops(cfg, grid, per_token_timesteps=True)
  want = flops.step_flops(cfg, tokens, per_token_timesteps=True)
  assert (linear, attention) == (want.linear, want.attention)

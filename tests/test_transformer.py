"""Model-level behaviour that parity alone does not pin down: stacking, remat, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wan_jax


def inputs(frames=3, height=4, width=6, prompt=5):
  cfg = wan_jax.tiny()
  latents = jax.random.normal(jax.random.key(0), (1, frames, height, width, cfg.in_channels))
  context = jax.random.normal(jax.random.key(1), (1, prompt, cfg.text_dim))
  return latents, jnp.array([421.0]), context


def test_blocks_are_stacked_for_scan():
  cfg = wan_jax.tiny(num_layers=3)
  model = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
  assert model.blocks.self_attn.q.kernel.value.shape == (3, cfg.dim, cfg.dim)
  assert model.blocks.modulation.value.shape == (3, 1, 6, cfg.dim)
  # Each layer got its own random weights.
  k = np.asarray(model.blocks.ffn_in.kernel.value)
  assert not np.allclose(k[0], k[1])


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policies_change_memory_not_results(remat):
  x = inputs()
  base = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  other = wan_jax.WanTransformer(wan_jax.tiny(remat=remat), rngs=nnx.Rngs(0))

  def grads(model):
    return nnx.jit(nnx.grad(lambda m: jnp.mean(m(*x) ** 2)))(model)

  np.testing.assert_allclose(np.asarray(other(*x)), np.asarray(base(*x)), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(nnx.state(grads(base))), jax.tree.leaves(nnx.state(grads(other)))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_chunked_and_xla_models_agree():
  x = inputs(frames=5, height=6, width=10)
  xla = wan_jax.WanTransformer(wan_jax.tiny(attention="xla"), rngs=nnx.Rngs(0))
  chunked = wan_jax.WanTransformer(wan_jax.tiny(attention="chunked", attention_chunk_size=16),
                                   rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(chunked(*x)), np.asarray(xla(*x)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dtypes():
  model = wan_jax.WanTransformer(wan_jax.tiny(param_dtype="bfloat16", compute_dtype="bfloat16"),
                                 rngs=nnx.Rngs(0))
  assert model.blocks.ffn_out.kernel.value.dtype == jnp.bfloat16
  out = model(*inputs())
  assert out.dtype == jnp.float32 and out.shape == (1, 3, 4, 6, 16)
  assert np.isfinite(np.asarray(out)).all()


def test_bad_shapes_are_clear_errors():
  model = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  latents, t, context = inputs()
  with pytest.raises(ValueError, match="do not fit patch"):
    model(latents[:, :, :3], t, context)
  too_long = jnp.zeros((1, model.config.text_len + 1, model.config.text_dim))
  with pytest.raises(ValueError, match="context must be"):
    model(latents, t, too_long)


def test_bad_config_values():
  with pytest.raises(ValueError, match="attention"):
    wan_jax.tiny(attention="flash")
  with pytest.raises(ValueError, match="divisible"):
    wan_jax.WanConfig(dim=100, num_heads=3)


def test_a14b_preset_has_the_published_parameter_count():
  abstract = nnx.eval_shape(lambda: wan_jax.WanTransformer(wan_jax.t2v_a14b(), rngs=nnx.Rngs(0)))
  count = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(nnx.state(abstract)))
  assert count == 14_288_491_584
  assert wan_jax.t2v_a14b().rope_split == (44, 42, 42)


def test_time_sinusoid_matches_float64():
  """Upstream Wan builds the time embedding in float64; fp32 products at t ~ 1000 are ~6e-5 off."""
  from wan_jax.model.transformer import timestep_sinusoid
  t = np.concatenate([[0.0, 0.001, 1.0, 874.9, 875.0, 999.999, 1000.0],
                      np.random.default_rng(0).uniform(0, 1000, 2000)]).astype(np.float32)
  freqs = np.power(10000.0, -np.arange(128) / 128)
  angles = t.astype(np.float64)[:, None] * freqs
  want = np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)
  got = np.asarray(jax.jit(timestep_sinusoid, static_argnums=1)(jnp.asarray(t), 256))
  assert np.abs(got - want).max() < 1e-6

"""The image-to-video expert: diffusers' WanTransformer3DModel(in_channels=36) and ours agree when
the condition is joined after the latents; T2V and I2V models refuse the wrong inputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from flax import nnx

import wan_jax
from reference import TINY, random_inputs, reference_forward, rel_error


@pytest.fixture(scope="module")
def i2v_reference(tmp_path_factory):
  """A tiny diffusers I2V expert with perturbed random weights, saved as a release folder."""
  torch.manual_seed(11)
  ref = WanTransformer3DModel(**{**TINY, "in_channels": 36}).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  folder = tmp_path_factory.mktemp("i2v") / "transformer"
  ref.save_pretrained(folder)
  return ref, folder


def test_i2v_expert_matches_diffusers(i2v_reference):
  ref, folder = i2v_reference
  model = wan_jax.load_transformer(folder, dtype="float32")
  assert model.config.in_channels == 36 and model.config.condition_channels == 20
  latents, timestep, context = random_inputs(seed=12, frames=5, height=6, width=10)
  condition = np.random.default_rng(13).standard_normal((*latents.shape[:4], 20), np.float32)
  got = np.asarray(model(jnp.asarray(latents), jnp.asarray(timestep), jnp.asarray(context),
                         jnp.asarray(condition)))
  want = reference_forward(ref, np.concatenate([latents, condition], axis=-1), timestep, context)
  assert got.shape == latents.shape  # 16 channels out: the flow of the noisy latents only
  assert rel_error(got, want) < 1e-5


@pytest.mark.slow
def test_the_dual_i2v_model_routes_with_its_condition_at_boundary_0_9(i2v_reference):
  ref, folder = i2v_reference
  high = wan_jax.load_transformer(folder, dtype="float32")
  low = wan_jax.WanTransformer(wan_jax.tiny_i2v(), rngs=nnx.Rngs(1))
  dual = wan_jax.DualWanTransformer(high, low, boundary=0.9)
  latents, _, context = random_inputs(seed=14, frames=3, height=4, width=6)
  condition = np.random.default_rng(15).standard_normal((*latents.shape[:4], 20), np.float32)
  args = jnp.asarray(latents), jnp.asarray(context), jnp.asarray(condition)
  for t, expert in ((900.0, high), (899.0, low)):  # 900 = 0.9 * 1000 is the first high-noise t
    timestep = jnp.full((2,), t)
    np.testing.assert_allclose(np.asarray(dual(args[0], timestep, args[1], args[2])),
                               np.asarray(expert(args[0], timestep, args[1], args[2])),
                               rtol=1e-6, atol=1e-6)


def test_the_wrong_inputs_for_the_task_are_clear_errors():
  t2v = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  i2v = wan_jax.WanTransformer(wan_jax.tiny_i2v(), rngs=nnx.Rngs(0))
  x, t, c = jnp.ones((1, 3, 4, 6, 16)), jnp.array([500.0]), jnp.ones((1, 5, 48))
  with pytest.raises(ValueError, match="text-to-video model .* takes no condition"):
    t2v(x, t, c, jnp.ones((1, 3, 4, 6, 20)))
  with pytest.raises(ValueError, match="image-to-video model needs a condition of 20 channels"):
    i2v(x, t, c)
  with pytest.raises(ValueError, match=r"condition \(1, 3, 4, 6, 16\) must be the latents' "
                                       r"\(1, 3, 4, 6\) with 20 channels"):
    i2v(x, t, c, jnp.ones((1, 3, 4, 6, 16)))
  assert wan_jax.i2v_a14b().in_channels == 36 and wan_jax.t2v_a14b().condition_channels == 0


@pytest.mark.slow
def test_the_public_call_takes_plain_names_on_one_expert_and_on_both():
  """README's "Load and run": model(latents, timestep, context, condition=cond), for the expert
  and the dual model alike (t = 930 is the high-noise expert's), equal to the positional call."""
  high = wan_jax.WanTransformer(wan_jax.tiny_i2v(), rngs=nnx.Rngs(0))
  low = wan_jax.WanTransformer(wan_jax.tiny_i2v(), rngs=nnx.Rngs(1))
  dual = wan_jax.DualWanTransformer(high, low, boundary=0.9)
  rng = np.random.default_rng(16)
  latents = jnp.asarray(rng.standard_normal((1, 3, 4, 6, 16), np.float32))
  cond = jnp.asarray(rng.standard_normal((1, 3, 4, 6, 20), np.float32))
  context, t = jnp.asarray(rng.standard_normal((1, 5, 48), np.float32)), jnp.array([930.0])
  want = np.asarray(high(latents, t, context, cond))
  np.testing.assert_array_equal(
      np.asarray(high(latents=latents, timestep=t, context=context, condition=cond)), want)
  np.testing.assert_allclose(np.asarray(dual(latents, t, context, condition=cond)), want,
                             rtol=1e-6, atol=1e-6)  # under lax.cond: compiled, not eager

"""The expert switch: which expert runs at the boundary, and where gradients go."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wan_jax


@pytest.fixture(scope="module")
def dual():
  cfg = wan_jax.tiny()
  return wan_jax.DualWanTransformer(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)),
                                    wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(1)))


def inputs(t: float):
  latents = jax.random.normal(jax.random.key(0), (2, 3, 4, 6, 16))
  context = jax.random.normal(jax.random.key(1), (2, 5, wan_jax.tiny().text_dim))
  return latents, jnp.full((2,), t, jnp.float32), context


call = nnx.jit(lambda m, x, t, c: m(x, t, c))


@pytest.mark.parametrize("t,expert", [(875.0, "high_noise"), (874.9, "low_noise"),
                                      (999.0, "high_noise"), (0.0, "low_noise")])
def test_boundary_routes_to_the_right_expert(dual, t, expert):
  x = inputs(t)
  got = np.asarray(call(dual, *x))
  chosen = np.asarray(call(getattr(dual, expert), *x))
  other = np.asarray(call(dual.low_noise if expert == "high_noise" else dual.high_noise, *x))
  np.testing.assert_array_equal(got, chosen)
  assert np.abs(got - other).max() > 1e-3


def test_i2v_boundary():
  cfg = wan_jax.tiny()
  d = wan_jax.DualWanTransformer(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)),
                                 wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(1)), boundary=0.9)
  assert bool(d.uses_high_noise(jnp.array([900.0])))
  assert not bool(d.uses_high_noise(jnp.array([899.99])))


def test_first_timestep_decides_the_batch(dual):
  assert bool(dual.uses_high_noise(jnp.array([880.0, 10.0])))
  assert not bool(dual.uses_high_noise(jnp.array([10.0, 880.0])))


@pytest.mark.slow
@pytest.mark.parametrize("t,trained,frozen", [(900.0, "high_noise", "low_noise"),
                                              (500.0, "low_noise", "high_noise")])
def test_gradients_reach_only_the_selected_expert(dual, t, trained, frozen):
  x = inputs(t)

  @nnx.jit
  def grads(model):
    return nnx.grad(lambda m: jnp.mean(m(*x) ** 2))(model)

  g = grads(dual)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(l)) for l in jax.tree.leaves(tree)))
  assert norm(nnx.state(getattr(g, trained))) > 0
  assert norm(nnx.state(getattr(g, frozen))) == 0.0


def test_bad_boundary():
  cfg = wan_jax.tiny()
  m = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="boundary"):
    wan_jax.DualWanTransformer(m, m, boundary=875)


def test_a_batch_across_the_boundary_is_reported(dual, caplog):
  latents, _, context = inputs(0.0)
  with caplog.at_level("WARNING"):
    call(dual, latents, jnp.array([900.0, 100.0]), context)
    jax.effects_barrier()
  assert "straddles the expert boundary" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    call(dual, latents, jnp.array([100.0, 200.0]), context)
    jax.effects_barrier()
  assert "straddles" not in caplog.text

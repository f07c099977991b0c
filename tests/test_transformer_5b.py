"""TI2V-5B's transformer against diffusers' WanTransformer3DModel: 48 channels in and out, and a
timestep per latent token (0 on the conditioning image's frame, as diffusers' WanPipeline builds
them with expand_timesteps=True). Weights go through our real key conversion (diffusers folder ->
load_transformer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import WanTransformer3DModel
from flax import nnx

import wan_jax
from reference import TEXT_LEN, TINY, make_reference, reference_forward, rel_error
from wan_jax.model.config import ti2v_5b, tiny_ti2v

CHANNELS = 48  # the Wan 2.2 VAE's latents
FRAMES, HEIGHT, WIDTH = 3, 6, 10  # odd frame count, H != W
TIMESTEPS = (300.5, 999.0)


@pytest.fixture(scope="module")
def ref_5b() -> WanTransformer3DModel:
  """A tiny 5B-shaped diffusers model, weights perturbed so norms and biases matter."""
  return make_reference(seed=21, in_channels=CHANNELS, out_channels=CHANNELS)


@pytest.fixture(scope="module")
def ours(ref_5b, tmp_path_factory) -> wan_jax.WanTransformer:
  folder = tmp_path_factory.mktemp("ti2v_diffusers") / "transformer"
  ref_5b.save_pretrained(folder)
  return wan_jax.load_transformer(folder, dtype="float32", attention="xla")


def inputs(seed: int):
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((2, FRAMES, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
  context = rng.standard_normal((2, 11, TINY["text_dim"])).astype(np.float32)
  return latents, context


def first_frame_mask() -> np.ndarray:
  """[F, H, W]: 0 on the first latent frame (the conditioning image), 1 elsewhere."""
  mask = np.ones((FRAMES, HEIGHT, WIDTH), np.float32)
  mask[0] = 0.0
  return mask


def max_abs(got, want) -> float:
  """The largest elementwise error relative to the largest reference value."""
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def forward(model, latents, timestep, context) -> np.ndarray:
  return np.asarray(model(jnp.asarray(latents), jnp.asarray(timestep), jnp.asarray(context)))


def test_loaded_architecture(ours):
  cfg = ours.config
  assert (cfg.in_channels, cfg.out_channels, cfg.condition_channels) == (48, 48, 0)
  assert cfg.arch_dict() == tiny_ti2v(num_heads=4, text_len=TEXT_LEN).arch_dict() | {
      "freq_dim": TINY["freq_dim"]}


@pytest.mark.slow
def test_one_timestep_per_sample(ref_5b, ours):
  latents, context = inputs(seed=0)
  t = np.asarray(TIMESTEPS, np.float32)
  got, want = forward(ours, latents, t, context), reference_forward(ref_5b, latents, t, context)
  err = rel_error(got, want)
  print(f"5B, timestep [B]: relative error {err:.2e} (L2), max abs {max_abs(got, want):.2e}")
  assert err < 1e-5


@pytest.mark.slow
def test_a_timestep_per_token(ref_5b, ours):
  """Ours takes [B, F, H, W]; diffusers takes [B, N] built as its pipeline builds it: the mask
  at [:, ::2, ::2] (each patch's first position) times t, flattened."""
  latents, context = inputs(seed=1)
  mask = first_frame_mask()
  t_BxFxHxW = np.stack([mask * t for t in TIMESTEPS]).astype(np.float32)
  t_BxN = np.stack([(mask[:, ::2, ::2] * t).reshape(-1) for t in TIMESTEPS]).astype(np.float32)
  want = reference_forward(ref_5b, latents, t_BxN, context)
  got = forward(ours, latents, t_BxFxHxW, context)
  err = rel_error(got, want)
  print(f"5B, timestep [B, F, H, W]: relative error {err:.2e} (L2), max abs "
        f"{max_abs(got, want):.2e}")
  assert err < 1e-5
  # The first frame's tokens really saw t = 0: the per-sample call differs there.
  per_sample = forward(ours, latents, np.asarray(TIMESTEPS, np.float32), context)
  assert rel_error(per_sample[:, 0], got[:, 0]) > 1e-2
  # One timestep per latent frame ([B, F], what the TI2V task passes) is the same model.
  t_BxF = np.stack([mask[:, 0, 0] * t for t in TIMESTEPS]).astype(np.float32)
  per_frame = forward(ours, latents, t_BxF, context)
  assert rel_error(per_frame, want) < 1e-5
  np.testing.assert_allclose(per_frame, got, rtol=1e-6, atol=1e-6)


def test_uniform_per_token_timesteps_equal_one_per_sample(ours):
  latents, context = inputs(seed=2)
  t_B = np.asarray(TIMESTEPS, np.float32)
  t_BxFxHxW = np.broadcast_to(t_B[:, None, None, None], latents.shape[:4]).copy()
  np.testing.assert_allclose(forward(ours, latents, t_BxFxHxW, context),
                             forward(ours, latents, t_B, context), rtol=1e-5, atol=1e-5)


def test_timestep_shapes_are_checked(ours):
  latents, context = inputs(seed=3)
  for bad in (np.zeros((2, FRAMES + 1), np.float32), np.zeros((2, FRAMES, HEIGHT, WIDTH - 2))):
    with pytest.raises(ValueError, match=r"timestep must be \[B\]"):
      forward(ours, latents, bad, context)


@pytest.mark.slow
def test_one_timestep_per_sample_stays_per_sample():
  """The A14B path: e0 [B, 6, D] and the head's [B, 1, 2, D]; no [B, N, 6, D] is ever built
  (nor with one timestep per latent frame)."""
  cfg = tiny_ti2v(attention="xla")
  graphdef, state = nnx.split(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  latents = jnp.ones((1, FRAMES, HEIGHT, WIDTH, CHANNELS))
  context = jnp.ones((1, 5, cfg.text_dim))
  tokens = FRAMES * (HEIGHT // 2) * (WIDTH // 2)

  def shapes(t):
    jaxpr = jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(latents, t, context))(state, t)
    found = set()

    def walk(j):
      for eqn in j.eqns:
        found.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for p in eqn.params.values():
          for sub in p if isinstance(p, (tuple, list)) else (p,):
            if isinstance(sub, jax.extend.core.ClosedJaxpr):
              walk(sub.jaxpr)
            elif isinstance(sub, jax.extend.core.Jaxpr):
              walk(sub)
    walk(jaxpr.jaxpr)
    return found

  per_token = (1, tokens, 6, cfg.dim)
  assert per_token not in shapes(jnp.array([500.0]))
  assert per_token in shapes(jnp.full((1, FRAMES, HEIGHT, WIDTH), 500.0))
  # One per latent frame: the modulation is per frame, [B, F, 6, D], broadcast over its tokens.
  per_frame = shapes(jnp.full((1, FRAMES), 500.0))
  assert per_token not in per_frame and (1, FRAMES, 6, cfg.dim) in per_frame


def test_presets():
  cfg = ti2v_5b()
  assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers, cfg.head_dim) == (
      3072, 14336, 24, 30, 128)
  assert (cfg.in_channels, cfg.out_channels, cfg.patch_size, cfg.freq_dim, cfg.text_dim) == (
      48, 48, (1, 2, 2), 256, 4096)
  assert (cfg.text_len, cfg.eps, cfg.rope_theta, cfg.rope_split) == (
      512, 1e-6, 10000.0, (44, 42, 42))
  abstract = nnx.eval_shape(lambda: wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract))) == 4_999_787_712
  assert tiny_ti2v().condition_channels == 0 and tiny_ti2v().in_channels == 48

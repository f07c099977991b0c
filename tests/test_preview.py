"""Preview sampling (schedule, expert switch, guidance) and media writing (the loss plot: test_plot.py)."""

from __future__ import annotations

import itertools

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import wan_jax
from wan_jax.model.vae_config import tiny_vae
from wan_jax.train.outputs import media_out
from wan_jax.train.outputs.preview import Guidance, flow_sigmas, render_previews, sample_latents

TEXT_DIM = wan_jax.tiny().text_dim
SHAPE = (1, 2, 4, 4, 16)


# --- the schedule ---

@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
def test_flow_sigmas_run_from_one_to_zero(shift):
  s = flow_sigmas(10, shift)
  assert len(s) == 11 and s[0] == 1.0 and s[-1] == 0.0
  assert np.all(np.diff(s) < 0)


def test_shift_one_is_linear_and_larger_shifts_stay_noisier():
  np.testing.assert_allclose(flow_sigmas(8, 1.0), np.linspace(1, 0, 9), atol=1e-15)
  assert np.all(flow_sigmas(8, 12.0)[1:-1] > flow_sigmas(8, 5.0)[1:-1])


@pytest.mark.parametrize("steps,shift", [(0, 5.0), (10, 0.0)])
def test_flow_sigmas_reject_bad_arguments(steps, shift):
  with pytest.raises(ValueError):
    flow_sigmas(steps, shift)


# --- the sampler, with experts that report themselves ---

CALLS: list[tuple[float, np.ndarray]] = []  # (gain of the expert that ran, its timesteps)


class Probe(nnx.Module):
  """An expert whose velocity is `gain * context[:, 0, 0]`, logging the timesteps it ran at."""

  def __init__(self, gain: float):
    self.gain = gain

  def __call__(self, x, t_B, context):
    jax.debug.callback(lambda t: CALLS.append((self.gain, np.asarray(t).copy())), t_B)
    return jnp.broadcast_to(self.gain * context[:, 0, 0, None, None, None, None], x.shape)


def probes(high_gain: float = 1.0, low_gain: float = -2.0):
  CALLS.clear()
  return wan_jax.DualWanTransformer(Probe(high_gain), Probe(low_gain)), CALLS


def expected_timesteps(num_steps: int, shift: float) -> np.ndarray:
  return (flow_sigmas(num_steps, shift)[:-1] * 1000).astype(np.float32)


def test_high_expert_runs_exactly_while_t_is_above_the_boundary():
  model, log = probes()
  ctx, neg = jnp.ones((1, 3, TEXT_DIM)), jnp.zeros((1, 3, TEXT_DIM))
  sample_latents(model, ctx, neg, SHAPE, jax.random.key(0), num_steps=12, shift=5.0)
  jax.effects_barrier()
  ts = expected_timesteps(12, 5.0)
  high = sorted(float(t[0]) for g, t in log if g == 1.0)
  low = sorted(float(t[0]) for g, t in log if g == -2.0)
  assert high == sorted(float(t) for t in ts if t >= np.float32(875.0))
  assert low == sorted(float(t) for t in ts if t < np.float32(875.0))
  assert 0 < len(high) < 12
  assert all(t.shape == (2,) for _, t in log)  # conditional and unconditional in one batch


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_each_expert_gets_its_own_guidance_scale(batch_cfg):
  """v_pos = gain, v_neg = 0, so the guided velocity is g * gain; Euler sums it up."""
  model, _ = probes()
  ctx, neg = jnp.ones((1, 3, TEXT_DIM)), jnp.zeros((1, 5, TEXT_DIM))
  key = jax.random.key(1)
  g = Guidance(low_noise=3.0, high_noise=4.0)
  got = sample_latents(model, ctx, neg, SHAPE, key, num_steps=10, shift=3.0, guidance=g,
                       batch_cfg=batch_cfg)
  sigmas = flow_sigmas(10, 3.0)
  high = expected_timesteps(10, 3.0) >= np.float32(875.0)
  drift = np.sum(np.diff(sigmas) * np.where(high, 4.0 * 1.0, 3.0 * -2.0))
  noise = jax.random.normal(key, SHAPE, jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(noise) + drift, atol=1e-5)


def test_a_zero_velocity_model_returns_its_noise():
  model, _ = probes(0.0, 0.0)
  key = jax.random.key(2)
  got = sample_latents(model, jnp.ones((1, 3, TEXT_DIM)), jnp.ones((1, 3, TEXT_DIM)), SHAPE, key,
                       num_steps=6, shift=5.0)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.random.normal(key, SHAPE)))


# --- the sampler on the tiny transformer ---

@pytest.fixture(scope="module")
def dual():
  cfg = wan_jax.tiny()
  return wan_jax.DualWanTransformer(wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0)),
                                    wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(1)))


@pytest.fixture(scope="module")
def contexts():
  ctx = jax.random.normal(jax.random.key(3), (1, 6, TEXT_DIM))
  neg = jax.random.normal(jax.random.key(4), (1, 4, TEXT_DIM))
  return ctx, neg


def manual_loop(dual, ctx, neg, key, num_steps, shift, g: Guidance):
  """The textbook loop, one expert call per pass, the expert picked in Python."""
  sigmas = flow_sigmas(num_steps, shift)
  x = jax.random.normal(key, SHAPE, jnp.float32)
  for s, s_next in itertools.pairwise(sigmas):
    t = np.float32(s * 1000)
    high = t >= np.float32(875.0)
    expert = dual.high_noise if high else dual.low_noise
    t_B = jnp.full((1,), t)
    v = expert(x, t_B, ctx)
    if neg is not None:
      v_neg = expert(x, t_B, neg)
      v = v_neg + (g.high_noise if high else g.low_noise) * (v - v_neg)
    x = x + np.float32(s_next - s) * v
  return np.asarray(x)


@pytest.mark.slow
def test_guided_sampler_matches_a_manual_loop(dual, contexts):
  ctx, neg = contexts
  key, g = jax.random.key(5), Guidance(3.0, 4.0)
  want = manual_loop(dual, ctx, neg, key, 4, 1.0, g)
  for batch_cfg in (True, False):
    got = sample_latents(dual, ctx, neg, SHAPE, key, num_steps=4, shift=1.0, guidance=g,
                         batch_cfg=batch_cfg)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_guidance_one_is_plain_conditional_sampling(dual, contexts):
  ctx, neg = contexts
  key = jax.random.key(6)
  plain = sample_latents(dual, ctx, None, SHAPE, key, num_steps=3, shift=5.0)
  np.testing.assert_array_equal(
      np.asarray(sample_latents(dual, ctx, neg, SHAPE, key, num_steps=3, shift=5.0,
                                guidance=1.0)), np.asarray(plain))
  np.testing.assert_allclose(np.asarray(plain), manual_loop(dual, ctx, None, key, 3, 5.0,
                                                            Guidance(1.0, 1.0)), atol=2e-4)


def test_sampler_rejects_mismatched_inputs(dual, contexts):
  ctx, neg = contexts
  with pytest.raises(ValueError, match="batch"):
    sample_latents(dual, ctx, neg, (2, *SHAPE[1:]), jax.random.key(0), num_steps=1)
  with pytest.raises(ValueError, match="does not fit"):
    sample_latents(dual, ctx, jnp.zeros((1, 4, 7)), SHAPE, jax.random.key(0), num_steps=1)


# --- rendering and writing ---

@pytest.fixture(scope="module")
def vae():
  return wan_jax.WanVAE(tiny_vae(), rngs=nnx.Rngs(2))


def render(dual, vae, out_dir, step, num_frames, prompts=("a cat", "a dog")):
  contexts = [jax.random.normal(jax.random.key(10 + i), (5 + 2 * i, TEXT_DIM))
              for i in range(len(prompts))]
  negative = jax.random.normal(jax.random.key(9), (3, TEXT_DIM))
  return render_previews(dual, vae, list(prompts), contexts, negative, out_dir, step,
                         height=32, width=48, num_frames=num_frames, num_steps=2, shift=5.0,
                         seed=7)


@pytest.mark.slow
def test_render_writes_readable_videos(dual, vae, tmp_path):
  paths = render(dual, vae, tmp_path, 120, num_frames=5)
  assert [p.name for p in paths] == ["step_000120_0.mp4", "step_000120_1.mp4"]
  for p in paths:
    frames = iio.imread(p, plugin="pyav")
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
  index = (tmp_path / "step_000120.txt").read_text()
  assert "step_000120_0.mp4\ta cat" in index and "step_000120_1.mp4\ta dog" in index
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["step_000120_0.mp4", "step_000120_1.mp4", "step_000120.txt"])  # no temporaries left


@pytest.mark.slow
def test_one_frame_is_a_png_and_the_seed_is_fixed_across_steps(dual, vae, tmp_path):
  first = render(dual, vae, tmp_path, 1, num_frames=1, prompts=("a cat",))
  second = render(dual, vae, tmp_path, 2, num_frames=1, prompts=("a cat",))
  assert first[0].name == "step_000001_0.png"
  with Image.open(first[0]) as a, Image.open(second[0]) as b:
    assert a.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("height,width,frames,match", [(30, 48, 5, "multiples of 16"),
                                                       (32, 40, 5, "multiples of 16"),
                                                       (32, 48, 4, "4k\\+1"),
                                                       (32, 48, 0, "4k\\+1")])
def test_render_rejects_bad_sizes(dual, vae, tmp_path, height, width, frames, match):
  with pytest.raises(ValueError, match=match):
    render_previews(dual, vae, ["x"], [jnp.zeros((2, TEXT_DIM))], None, tmp_path, 0,
                    height=height, width=width, num_frames=frames, num_steps=1)


def test_render_needs_one_context_per_prompt(dual, vae, tmp_path):
  with pytest.raises(ValueError, match="contexts"):
    render_previews(dual, vae, ["a", "b"], [jnp.zeros((2, TEXT_DIM))], None, tmp_path, 0,
                    height=16, width=16, num_frames=1, num_steps=1)


@pytest.mark.slow
def test_video_writer_pads_odd_sizes(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (3, 15, 21, 3), dtype=np.uint8)
  path = media_out.write_video(frames, tmp_path / "odd.mp4")
  assert iio.imread(path, plugin="pyav").shape == (3, 16, 22, 3)


def test_to_uint8_maps_the_vae_range():
  np.testing.assert_array_equal(media_out.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])


def test_a_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError), media_out.atomic_path(tmp_path / "x.png") as tmp:
    tmp.write_bytes(b"partial")
    raise RuntimeError("crash")
  assert list(tmp_path.iterdir()) == []

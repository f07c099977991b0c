"""The training objective: timestep sampling, noised latents, masked loss, expert alternation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from wan_jax.train.step.expert_schedule import active_expert, active_expert_index
from wan_jax.train.step.objective import masked_mse, noisy_latents
from wan_jax.model.flow_matching import expert_range
from wan_jax.train.step.timesteps import METHODS, sample_timesteps

N = 100_000
KS_LIMIT = 1.95 / np.sqrt(N)  # Kolmogorov-Smirnov critical distance at alpha = 0.001
PARAMS = {"shift": 5.0, "logit_mean": 0.0, "logit_std": 1.0}
sample = jax.jit(sample_timesteps, static_argnames=("batch", "method"))


# ---------------------------------------------------------------- timestep ranges and sampling

def method_cdf(method: str, s: np.ndarray, shift: float = 5.0, logit_mean: float = 0.0,
               logit_std: float = 1.0) -> np.ndarray:
  """The untruncated CDF of s = t / 1000, in float64."""
  s = np.asarray(s, np.float64)
  if method == "uniform":
    return s
  if method == "shift":
    return s / (shift - (shift - 1) * s)
  with np.errstate(divide="ignore"):
    return ndtr((np.log(s) - np.log1p(-s) - logit_mean) / logit_std)


def ks_distance(draws: np.ndarray, low: float, high: float, method: str, **params) -> float:
  """Kolmogorov-Smirnov distance between the draws and the method's CDF truncated to the range."""
  x = np.sort(np.asarray(draws, np.float64)) / 1000
  lo, hi = method_cdf(method, np.array([low / 1000, high / 1000]), **params)
  cdf = (method_cdf(method, x, **params) - lo) / (hi - lo)
  i = np.arange(1, len(x) + 1)
  return float(max(np.max(i / len(x) - cdf), np.max(cdf - (i - 1) / len(x))))


def test_expert_ranges_are_exact_and_contiguous():
  assert expert_range("high", 0.875) == (875.0, 1000.0)
  assert expert_range("low", 0.875) == (0.0, 875.0)
  assert expert_range("high", 0.9) == (900.0, 1000.0)
  assert expert_range("low", 0.9)[1] == expert_range("high", 0.9)[0]
  assert expert_range("high", 0.0) == (0.0, 1000.0)  # one expert (TI2V-5B): every timestep


@pytest.mark.parametrize("expert,boundary", [("mid", 0.875), ("High", 0.875), ("high", -0.5),
                                             ("low", 1.0), ("low", -0.1), ("high", 1.5)])
def test_expert_range_errors(expert, boundary):
  with pytest.raises(ValueError, match="expert must be|boundary must be"):
    expert_range(expert, boundary)


def test_sampler_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="method must be one of"):
    sample_timesteps(key, 4, 0.0, 875.0, "sigmoid")
  with pytest.raises(ValueError, match="low < high"):
    sample_timesteps(key, 4, 875.0, 875.0)
  with pytest.raises(ValueError, match="low < high"):
    sample_timesteps(key, 4, 900.0, 1001.0)
  with pytest.raises(ValueError, match="shift must be"):
    sample_timesteps(key, 4, 0.0, 875.0, "shift", shift=0.0)
  with pytest.raises(ValueError, match="logit_std must be"):
    sample_timesteps(key, 4, 0.0, 875.0, "logit_normal", logit_std=0.0)


@pytest.mark.parametrize("boundary", [0.875, 0.9])
@pytest.mark.parametrize("method", METHODS)
def test_draws_stay_in_range_cover_it_and_follow_the_truncated_law(method, boundary):
  threshold = np.float32(boundary * 1000)
  draws = {}
  for i, expert in enumerate(("high", "low")):
    low, high = expert_range(expert, boundary)
    key = jax.random.fold_in(jax.random.key(2024), 100 * METHODS.index(method) + 10 * i
                             + int(boundary == 0.9))  # an independent stream per case
    t = np.asarray(sample(key, batch=N, low=low, high=high, method=method,
                          **PARAMS))
    assert t.dtype == np.float32 and t.shape == (N,)
    assert np.all(t >= np.float32(low)) and np.all(t <= np.float32(high))
    # The routing rule of the dual model, in float32: every draw goes to its own expert.
    assert np.all((t >= threshold) == (expert == "high"))
    assert ks_distance(t, low, high, method, **PARAMS) < KS_LIMIT
    draws[expert] = t
  # Together the two ranges reach the threshold from both sides: no gap in what gets trained.
  assert threshold - 0.5 < draws["low"].max() < threshold <= draws["high"].min() < threshold + 0.5
  if method == "uniform":
    for expert, (low, high) in (("high", expert_range("high", boundary)),
                                ("low", expert_range("low", boundary))):
      width = high - low
      assert abs(draws[expert].mean() - (low + high) / 2) < 4 * width / np.sqrt(12 * N)
      assert draws[expert].min() < low + 0.01 * width and draws[expert].max() > high - 0.01 * width


def test_ks_check_can_tell_the_methods_apart():
  """The distribution test has power: shifted draws are far from the truncated uniform law."""
  t = np.asarray(sample(jax.random.key(3), batch=N, low=0.0, high=875.0, method="shift"))
  assert ks_distance(t, 0.0, 875.0, "uniform") > 0.1
  t = np.asarray(sample(jax.random.key(3), batch=N, low=875.0, high=1000.0, method="uniform"))
  assert ks_distance(t, 875.0, 1000.0, "logit_normal") > 0.1


@pytest.mark.parametrize("seed,method,params,low,high", [
    (1, "logit_normal", {"logit_mean": -2.0, "logit_std": 0.7}, 875.0, 1000.0),  # far upper tail
    (2, "logit_normal", {"logit_mean": 1.5, "logit_std": 1.3}, 0.0, 900.0),
    (3, "shift", {"shift": 3.0}, 900.0, 1000.0),
    (4, "shift", {"shift": 0.5}, 0.0, 875.0),
])
def test_other_parameters_follow_the_truncated_law(seed, method, params, low, high):
  t = np.asarray(sample(jax.random.key(seed), batch=N, low=low, high=high, method=method, **params))
  assert np.all(t >= np.float32(low)) and np.all(t < np.float32(high))
  assert ks_distance(t, low, high, method, **params) < KS_LIMIT


@pytest.mark.parametrize("method", METHODS)
def test_a_range_a_few_ulps_wide_never_reaches_its_upper_end(method):
  high = 875.0
  low = float(np.nextafter(np.nextafter(np.float32(high), np.float32(0)), np.float32(0)))
  t = np.asarray(sample(jax.random.key(1), batch=1000, low=low, high=high, method=method))
  assert np.all(t >= np.float32(low)) and np.all(t < np.float32(high))


def test_bounds_may_be_traced():
  @jax.jit
  def draw(key, low, high):
    return sample_timesteps(key, 1000, low, high, "logit_normal")
  t = np.asarray(draw(jax.random.key(0), jnp.float32(875.0), jnp.float32(1000.0)))
  assert np.all((t >= 875.0) & (t < 1000.0))


# ---------------------------------------------------------------- noised latents

def test_noisy_latents_ends_and_target():
  x0 = jax.random.normal(jax.random.key(0), (3, 5, 2, 3, 4))
  noise = jax.random.normal(jax.random.key(1), (3, 5, 2, 3, 4))
  x_t, target = noisy_latents(x0, noise, jnp.array([0.0, 1000.0, 250.0]))
  np.testing.assert_array_equal(x_t[0], x0[0])
  np.testing.assert_array_equal(x_t[1], noise[1])
  np.testing.assert_allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(target, noise - x0)


def test_noisy_latents_dtypes():
  x0 = jnp.ones((1, 1, 2, 2, 4), jnp.bfloat16)
  x_t, target = noisy_latents(x0, jnp.zeros_like(x0), jnp.array([500.0]))
  assert x_t.dtype == jnp.bfloat16 and target.dtype == jnp.float32


# ---------------------------------------------------------------- masked loss

def loss_of(pred, target, w, mult):
  return masked_mse(pred, target, w, mult)[0]


def test_black_cells_get_zero_gradient_and_grey_cells_a_proportional_one():
  shape = (2, 3, 4, 5, 16)
  target = jax.random.normal(jax.random.key(0), shape)
  pred = target + 0.3  # the same error everywhere
  w = np.ones(shape[:-1], np.float32)
  w[0, :, :2] = 0.0   # black
  w[0, 1, 2:] = 0.5   # grey
  w[1, 2] = 0.0
  grad = np.asarray(jax.grad(loss_of)(pred, target, jnp.asarray(w), jnp.ones(2)))
  assert np.all(grad[w == 0] == 0.0)
  assert np.all(grad[w > 0] != 0.0)
  np.testing.assert_allclose(grad[0, 1, 2:], 0.5 * grad[0, 0, 2:], rtol=1e-6)
  # A perturbation under the black mask leaves the loss exactly unchanged.
  bumped = pred.at[0, :, :2].add(100.0)
  assert loss_of(bumped, target, w, jnp.ones(2)) == loss_of(pred, target, w, jnp.ones(2))


@pytest.mark.slow
def test_an_all_black_item_is_skipped_without_nan():
  shape = (3, 3, 2, 5, 4)
  pred = jax.random.normal(jax.random.key(0), shape)
  target = jax.random.normal(jax.random.key(1), shape)
  w = jax.random.uniform(jax.random.key(2), shape[:-1]).at[2].set(0.0)
  loss, per_item = masked_mse(pred, target, w, jnp.ones(3))
  loss_two, _ = masked_mse(pred[:2], target[:2], w[:2], jnp.ones(2))
  assert np.isfinite(loss) and per_item[2] == 0.0
  np.testing.assert_allclose(loss, loss_two, rtol=1e-6)
  grad = np.asarray(jax.grad(loss_of)(pred, target, w, jnp.ones(3)))
  assert np.all(np.isfinite(grad)) and np.all(grad[2] == 0.0)
  # No weight anywhere: loss 0, gradient 0, never NaN.
  zero = jnp.zeros(shape[:-1])
  loss, per_item = masked_mse(pred, target, zero, jnp.ones(3))
  assert loss == 0.0 and np.all(np.asarray(per_item) == 0.0)
  assert np.all(np.asarray(jax.grad(loss_of)(pred, target, zero, jnp.ones(3))) == 0.0)


def test_loss_multiplier_scales_an_items_contribution():
  shape = (2, 1, 3, 3, 4)
  pred = jax.random.normal(jax.random.key(0), shape)
  target = jnp.zeros(shape)
  w = jnp.ones(shape[:-1])
  _, base = masked_mse(pred, target, w, jnp.ones(2))
  loss, per_item = masked_mse(pred, target, w, jnp.array([2.0, 1.0]))
  np.testing.assert_allclose(per_item, [2 * base[0], base[1]], rtol=1e-6)
  np.testing.assert_allclose(loss, (2 * base[0] + base[1]) / 2, rtol=1e-6)


def test_masked_mse_matches_a_hand_computation():
  """Odd frame count, non-square grid, grey and black weights, one empty item."""
  rng = np.random.default_rng(0)
  B, F, H, W, C = 3, 5, 3, 7, 4
  pred = rng.normal(size=(B, F, H, W, C)).astype(np.float32)
  target = rng.normal(size=(B, F, H, W, C)).astype(np.float32)
  w = rng.uniform(size=(B, F, H, W)).astype(np.float32)
  w[w < 0.3] = 0.0
  w[1] = 0.0
  mult = np.array([1.0, 3.0, 0.5], np.float32)
  per_item = np.zeros(B)
  for b in range(B):
    num = den = 0.0
    for f in range(F):
      for h in range(H):
        for x in range(W):
          den += w[b, f, h, x]
          for c in range(C):
            num += w[b, f, h, x] * (float(pred[b, f, h, x, c]) - float(target[b, f, h, x, c])) ** 2
    per_item[b] = mult[b] * num / (C * den) if den > 0 else 0.0
  expected = (per_item[0] + per_item[2]) / 2
  loss, got = masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(w), jnp.asarray(mult))
  np.testing.assert_allclose(got, per_item, rtol=1e-5)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert loss.dtype == jnp.float32
  # bf16 inputs are reduced in float32 too.
  loss16, _ = masked_mse(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16),
                         jnp.asarray(w), jnp.asarray(mult))
  assert loss16.dtype == jnp.float32
  np.testing.assert_allclose(loss16, expected, rtol=2e-2)


def test_a_single_frame_mask_broadcasts_over_frames():
  shape = (2, 5, 3, 4, 4)
  pred = jax.random.normal(jax.random.key(0), shape)
  target = jax.random.normal(jax.random.key(1), shape)
  w1 = jax.random.uniform(jax.random.key(2), (2, 1, 3, 4))
  np.testing.assert_allclose(masked_mse(pred, target, w1, jnp.ones(2))[0],
                             masked_mse(pred, target, jnp.repeat(w1, 5, 1), jnp.ones(2))[0],
                             rtol=1e-6)


# ---------------------------------------------------------------- expert alternation

def test_both_experts_alternate_starting_with_high():
  got = [active_expert(s, True, True, 3) for s in range(13)]
  assert "".join(e[0].upper() for e in got) == "HHHLLLHHHLLLH"
  index = jax.jit(lambda s: active_expert_index(s, True, True, 3))
  assert [int(index(s)) for s in range(13)] == [0 if e == "high" else 1 for e in got]
  # Pure function of the step: a run resumed at step 1000 is where an unbroken one would be.
  assert active_expert(1000, True, True, 3) == ("high" if (1000 // 3) % 2 == 0 else "low")
  assert [active_expert(s, True, True, 1) for s in range(4)] == ["high", "low", "high", "low"]


@pytest.mark.parametrize("train_high,expert", [(True, "high"), (False, "low")])
def test_one_expert_is_always_that_one(train_high, expert):
  assert {active_expert(s, train_high, not train_high, 3) for s in range(20)} == {expert}
  assert {int(active_expert_index(s, train_high, not train_high, 3)) for s in range(7)} == {
      0 if expert == "high" else 1}


def test_alternation_errors():
  with pytest.raises(ValueError, match="at least one expert"):
    active_expert(0, False, False, 3)
  with pytest.raises(ValueError, match="at least one expert"):
    active_expert_index(0, False, False, 3)
  for bad in (0, -2, 1.5):
    with pytest.raises(ValueError, match="switch_every"):
      active_expert(0, True, True, bad)
  with pytest.raises(ValueError, match="step must be"):
    active_expert(-1, True, True, 3)

"""The TI2V-5B's training task: which rows train image-to-video, and what the model then reads."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wan_jax.tasks import TEXT_IMAGE_TO_VIDEO

B, F, H, W, C = 16, 3, 4, 6, 5


def _inputs(prob: float, frames: int = F, key: int = 3):
  task = dataclasses.replace(TEXT_IMAGE_TO_VIDEO, i2v_prob=prob)
  mean_x0 = jax.random.normal(jax.random.key(0), (B, frames, H, W, C))
  x_t = jax.random.normal(jax.random.key(1), (B, frames, H, W, C))
  weights = jax.random.uniform(jax.random.key(2), (B, frames, H, W))
  t = jnp.linspace(10.0, 990.0, B)
  out = task.model_inputs({"weights": weights}, mean_x0, x_t, t, jax.random.key(key))
  return out, mean_x0, x_t, weights, t


def test_image_rows_get_their_clean_first_frame_at_timestep_zero_and_no_loss_there():
  out, mean_x0, x_t, weights, t = _inputs(0.5)
  assert out.condition is None and out.timestep.shape == (B, F)  # one per latent frame
  image = np.asarray(out.timestep[:, 0] == 0.0)
  assert 0 < image.sum() < B  # both kinds of rows in one batch: the mask is per row
  for b in range(B):
    if image[b]:
      np.testing.assert_array_equal(out.latents[b, 0], mean_x0[b, 0])
      np.testing.assert_array_equal(out.timestep[b, 0], 0.0)
      np.testing.assert_array_equal(out.weights[b, 0], 0.0)
    else:
      np.testing.assert_array_equal(out.latents[b, 0], x_t[b, 0])
      np.testing.assert_array_equal(out.timestep[b, 0], t[b])
      np.testing.assert_array_equal(out.weights[b, 0], weights[b, 0])
    # later frames: noised at the row's t, with their own loss weights, in every row
    np.testing.assert_array_equal(out.latents[b, 1:], x_t[b, 1:])
    np.testing.assert_array_equal(out.timestep[b, 1:], t[b])
    np.testing.assert_array_equal(out.weights[b, 1:], weights[b, 1:])


def test_the_draw_is_a_function_of_the_key():
  first = _inputs(0.5, key=7)[0].timestep[:, 0]
  again = _inputs(0.5, key=7)[0].timestep[:, 0]
  other = _inputs(0.5, key=8)[0].timestep[:, 0]
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_all_none_and_still_images():
  every = _inputs(1.0)[0]
  np.testing.assert_array_equal(every.timestep[:, 0], 0.0)
  for prob, frames in ((0.0, F), (1.0, 1)):  # text-to-video only, or one latent frame
    out, _, x_t, weights, t = _inputs(prob, frames)
    assert out.timestep.shape == (B,)
    np.testing.assert_array_equal(out.latents, x_t)
    np.testing.assert_array_equal(out.weights, weights)


def test_the_probability_is_read_from_the_config_and_checked():
  cfg = ml_collections.ConfigDict({"ti2v": {"i2v_prob": 0.25}})
  assert TEXT_IMAGE_TO_VIDEO.configured(cfg).i2v_prob == 0.25
  for bad in (1.5, -0.1, "half", True):
    cfg = ml_collections.ConfigDict({"ti2v": {"i2v_prob": bad}}, type_safe=False)
    with pytest.raises(ValueError, match="ti2v.i2v_prob must be a probability"):
      TEXT_IMAGE_TO_VIDEO.configured(cfg)
  bare = ml_collections.ConfigDict({"model": {"arch": "tiny_ti2v"}})  # another task's config
  with pytest.raises(ValueError, match="lacks .*use configs/wan22_5b_masked.py$"):
    TEXT_IMAGE_TO_VIDEO.configured(bare)


def test_a_preview_image_replaces_frame_zero_at_each_step_and_at_the_end():
  latents = jax.random.normal(jax.random.key(0), (2, F, H, W, C))
  image = jax.random.normal(jax.random.key(1), (1, 1, H, W, C))
  mixed, timestep, condition = TEXT_IMAGE_TO_VIDEO.sample_inputs(latents, jnp.full((2,), 500.0),
                                                                 image)
  assert condition is None and timestep.shape == (2, F)
  np.testing.assert_array_equal(mixed[:, 0], jnp.broadcast_to(image[:, 0], (2, H, W, C)))
  np.testing.assert_array_equal(mixed[:, 1:], latents[:, 1:])
  np.testing.assert_array_equal(timestep[:, 0], 0.0)
  np.testing.assert_array_equal(timestep[:, 1:], 500.0)
  done = TEXT_IMAGE_TO_VIDEO.finish_sample(latents, image)
  np.testing.assert_array_equal(done[:, 0], mixed[:, 0])
  plain = TEXT_IMAGE_TO_VIDEO.sample_inputs(latents, jnp.full((2,), 500.0), None)
  assert plain[1].shape == (2,) and plain[0] is latents

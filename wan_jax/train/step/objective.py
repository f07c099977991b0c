"""The flow-matching objective: noised latents, the velocity target, and the masked loss.

Rectified flow as in Wan: x_t = (1 - s) x0 + s noise with s = t / 1000, and the model predicts
the velocity v = noise - x0. The loss is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wan_jax.model.flow_matching import NUM_TRAIN_TIMESTEPS


def noisy_latents(x0_BxFxHxWxC: jax.Array, noise_BxFxHxWxC: jax.Array,
                  t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_t, target): x_t in the latents' dtype (what the model reads), target in float32.

  t = 0 gives x0 and t = 1000 gives the noise, exactly.
  """
  x0 = x0_BxFxHxWxC.astype(jnp.float32)
  noise = noise_BxFxHxWxC.astype(jnp.float32)
  s = jnp.asarray(t_B, jnp.float32) / NUM_TRAIN_TIMESTEPS
  s_Bx1x1x1x1 = s.reshape(s.shape + (1,) * (x0.ndim - s.ndim))
  x_t = (1 - s_Bx1x1x1x1) * x0 + s_Bx1x1x1x1 * noise
  dtype = jnp.result_type(x0_BxFxHxWxC.dtype, noise_BxFxHxWxC.dtype)
  return x_t.astype(dtype), noise - x0


def masked_mse(pred_BxFxHxWxC: jax.Array, target_BxFxHxWxC: jax.Array, weights_BxFxHxW: jax.Array,
               loss_multiplier_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, per_item [B]): a weighted MSE per item, then the mean over items that have weight.

  Reduction, all in float32, with w the weights on the latent grid (broadcast over the C
  channels; a [B, 1, H, W] mask broadcasts over frames too):
    per_item[b] = loss_multiplier[b] * sum_{f,h,w,c} w (pred - target)^2 / (C * sum_{f,h,w} w)
                  (the channel mean of the w-weighted grid mean; 0 for an item with sum w = 0)
    loss        = mean of per_item over the items with sum w > 0   (0 if there are none)
  So a weight of 0 gives exactly zero gradient, a grey weight scales its cells' gradient, and an
  all-black item (or a padding row) neither contributes nor produces NaN (in value or gradient).
  Items are averaged equally whatever their mask area, so a small mask is not drowned out.
  """
  err = pred_BxFxHxWxC.astype(jnp.float32) - target_BxFxHxWxC.astype(jnp.float32)
  w = jnp.broadcast_to(weights_BxFxHxW.astype(jnp.float32), err.shape[:-1])
  channels = err.shape[-1]
  axes = tuple(range(1, w.ndim))
  weighted_sum_B = jnp.sum(w[..., None] * jnp.square(err), axis=axes + (w.ndim,))
  weight_sum_B = jnp.sum(w, axis=axes)
  has_weight_B = weight_sum_B > 0
  # The inner where keeps the division finite for empty items, so their gradient is 0, not NaN.
  per_item_B = jnp.where(has_weight_B,
                         weighted_sum_B / (channels * jnp.where(has_weight_B, weight_sum_B, 1.0)),
                         0.0)
  per_item_B = per_item_B * jnp.asarray(loss_multiplier_B, jnp.float32)
  count = jnp.sum(has_weight_B.astype(jnp.float32))
  loss = jnp.sum(per_item_B) / jnp.maximum(count, 1.0)
  return loss, per_item_B

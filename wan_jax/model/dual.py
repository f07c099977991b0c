"""Wan 2.2 A14B's two experts behind one call: `jax.lax.cond` on the timestep picks one.

t >= boundary * 1000 -> the high-noise expert, else the low-noise one (boundary 0.875 for T2V,
0.9 for I2V). One branch runs per call, and gradients reach only the expert that ran.

A batch is routed as a whole by its FIRST timestep, `timestep[0]`: every item of a batch must lie
on the same side of the boundary (the training sampler draws each batch inside one expert's range).
A batch that straddles the boundary is still routed by timestep[0], and logs a warning naming its
timesteps, so a caller that breaks the rule finds out. (Running both experts for such batches
would make every compiled step reserve memory for two experts' activations.)

A one-model release (the TI2V-5B) is the same model in both places with boundary 0: it runs for
every timestep, with no switch compiled.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.flow_matching import threshold
from wan_jax.model.transformer import WanTransformer

log = logging.getLogger(__name__)


def _warn_mixed(timestep_B: np.ndarray, threshold: float) -> None:
  log.warning("a batch straddles the expert boundary (t >= %g is high-noise): timesteps %s; "
              "all of it went to the expert of timestep[0]", threshold, np.asarray(timestep_B))


def _per_sample(timestep: jax.Array) -> jax.Array:
  """[B] timesteps from [B] or a timestep per latent position [B, F, H, W] (each sample's
  largest: a TI2V image frame at t = 0 beside noisy frames at t)."""
  return timestep if timestep.ndim == 1 else timestep.reshape(timestep.shape[0], -1).max(axis=1)


class DualWanTransformer(nnx.Module):

  def __init__(self, high_noise: WanTransformer, low_noise: WanTransformer,
               boundary: float = 0.875):
    if not 0.0 <= boundary < 1.0:
      raise ValueError(f"boundary must be in [0, 1) (0: one model for every t), got {boundary}")
    self.high_noise = high_noise
    self.low_noise = low_noise
    self.boundary = boundary

  @property
  def threshold(self) -> float:
    """The first timestep that belongs to the high-noise expert."""
    return threshold(self.boundary)

  def uses_high_noise(self, timestep: jax.Array) -> jax.Array:
    """Whether the first sample's timestep (its largest, for a timestep per latent position)
    selects the high-noise expert."""
    return _per_sample(timestep)[0].astype(jnp.float32) >= jnp.float32(self.threshold)

  def __call__(self, latents: jax.Array, timestep: jax.Array, context: jax.Array,
               condition: jax.Array | None = None, *, check_batch: bool = True) -> jax.Array:
    """The prediction of the expert that timestep[0] selects.

    check_batch=False skips the straddle warning, for callers whose batch shares one timestep
    by construction (the preview sampler): the warning is a host callback, and JAX does not
    keep programs with host callbacks in its persistent compilation cache.
    """
    latents_BxFxHxWxC, timestep_B, context_BxLxT = latents, timestep, context
    condition_BxFxHxWxK = condition
    graphdef, state = nnx.split((self.high_noise, self.low_noise))

    def run(index: int):
      def branch(state):
        model = nnx.merge(graphdef, state)[index]
        if condition_BxFxHxWxK is None:  # text-to-video experts take three inputs
          return model(latents_BxFxHxWxC, timestep_B, context_BxLxT)
        return model(latents_BxFxHxWxC, timestep_B, context_BxLxT, condition_BxFxHxWxK)
      return branch

    if self.boundary == 0.0:  # one model for every timestep (the TI2V-5B): no switch
      return run(0)(state)
    high = self.uses_high_noise(timestep_B)
    if check_batch:
      per_sample = _per_sample(timestep_B).astype(jnp.float32)
      mixed = jnp.any((per_sample >= jnp.float32(self.threshold)) != high)
      jax.lax.cond(mixed, lambda t: jax.debug.callback(_warn_mixed, t, self.threshold),
                   lambda t: None, per_sample)
    return jax.lax.cond(high, run(0), run(1), state)

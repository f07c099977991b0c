"""Text-and-image-to-video (Wan 2.2 TI2V-5B): one model that animates a prompt, or a prompt and a
start image, with no condition channels: the image's latent takes the first latent frame's place.

How upstream samples image-to-video (Wan2.2 `wan/textimage2video.py`; diffusers
`WanImageToVideoPipeline` with `expand_timesteps=True`): the start image is encoded alone (the
posterior mean, normalised; the causal VAE encodes a clip's frame 0 alone too, so it is exactly
the clip's first latent frame), it replaces latent frame 0 of the model's input at every step,
the tokens of that frame get timestep 0 and the others the step's t, and the model's prediction
for frame 0 is thrown away. Here the timestep is passed per latent frame ([B, F]): the same
model, with the modulation per frame instead of per token.

Training does the same per row: with probability `ti2v.i2v_prob` (drawn in the step from its key,
so a resumed run draws the same) a clip's first latent frame is its clean latent (the posterior
mean, as a sampler encodes the image) at timestep 0, and that frame is left out of the loss. The
reasoning: at t = 0 the flow target noise - x0 holds noise the model cannot see, so the frame's
loss is irreducible variance that only adds gradient noise; every sampler discards that prediction
anyway; later frames still learn from the clean frame through attention; and the loss stays a
masked mean, on the scale of the text-to-video rows. ai-toolkit (`wan22_5b`, since its first-frame
loss mask) and DiffSynth-Studio leave it out the same way; VideoX-Fun and SimpleTuner keep it. The
other rows train text-to-video (every frame noised, one t): one LoRA learns both, as the release
does.
Still images (one latent frame) always train text-to-video: conditioning an image on itself
teaches only copying.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wan_jax.tasks.base import ModelInputs, Task

DEFAULT_I2V_PROB = 0.5  # VideoX-Fun's split; ai-toolkit's do_i2v is 1.0


@dataclasses.dataclass(frozen=True)
class TextImageToVideo(Task):
  name: str = "ti2v"
  title: str = "text-and-image-to-video"
  i2v_prob: float = DEFAULT_I2V_PROB  # rows of more than one latent frame trained image-to-video
  takes_preview_images: bool = True  # optional: a prompt without one previews text-to-video

  def configured(self, cfg: ml_collections.ConfigDict) -> TextImageToVideo:
    if cfg.get("ti2v") is None:
      raise ValueError(f"model.arch={cfg.model.arch!r} trains the TI2V-5B, whose settings this "
                       "config lacks (ti2v.i2v_prob, one model at boundary 0): use "
                       "configs/wan22_5b_masked.py")
    prob = cfg.ti2v.i2v_prob
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
      raise ValueError(f"ti2v.i2v_prob must be a probability in [0, 1] (the share of clips "
                       f"trained image-to-video), got {prob!r}")
    return dataclasses.replace(self, i2v_prob=float(prob))

  def model_inputs(self, batch: Mapping[str, jax.Array], mean_x0: jax.Array, x_t: jax.Array,
                   t_B: jax.Array, key: jax.Array) -> ModelInputs:
    b, f, h, w, _ = x_t.shape
    if f == 1 or self.i2v_prob <= 0.0:  # static: nothing to condition on in this bucket
      return super().model_inputs(batch, mean_x0, x_t, t_B, key)
    image_B = jax.random.bernoulli(key, self.i2v_prob, (b,))
    given_BxF = jnp.zeros((b, f), bool).at[:, 0].set(image_B)
    latents = jnp.where(given_BxF[:, :, None, None, None], mean_x0.astype(x_t.dtype), x_t)
    # one timestep per latent frame: the model modulates per frame, never per token
    t_BxF = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32)[:, None], (b, f))
    timestep_BxF = jnp.where(given_BxF, 0.0, t_BxF)
    weights = jnp.broadcast_to(batch["weights"], (b, f, h, w))
    weights = jnp.where(given_BxF[:, :, None, None], 0.0, weights)
    return ModelInputs(latents, timestep_BxF, None, weights)

  # Previews: a start image is optional (without one the preview is text-to-video).
  def preview_condition(self, vae: Any, image: np.ndarray | None, num_frames: int,
                        last_image: np.ndarray | None = None) -> jax.Array | None:
    """The start image's normalised latent [1, 1, H/s, W/s, C] (None: text-to-video)."""
    if image is None:
      return None
    start = jnp.asarray(image, jnp.float32)[None, None] / 127.5 - 1.0
    return vae.encode(start)

  def sample_inputs(self, latents: jax.Array, t_B: jax.Array,
                    condition: jax.Array | None) -> tuple[jax.Array, jax.Array, None]:
    """(model input, timestep, model condition) at one sampler step: the image latent in
    frame 0 at timestep 0 (upstream's re-mix), or plain text-to-video without an image."""
    if condition is None:
      return latents, t_B, None
    b, f = latents.shape[:2]
    timestep_BxF = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32)[:, None], (b, f))
    return _image_in_frame_0(latents, condition), timestep_BxF.at[:, 0].set(0.0), None

  def finish_sample(self, latents: jax.Array, condition: jax.Array | None) -> jax.Array:
    """The sampled latents with the image's latent as frame 0 (the model's own is discarded)."""
    return latents if condition is None else _image_in_frame_0(latents, condition)


def _image_in_frame_0(latents: jax.Array, image_latent: jax.Array) -> jax.Array:
  """latents [B, F, H, W, C] with frame 0 replaced by the image's latent [1 or B, 1, H, W, C]."""
  b, _, h, w, c = latents.shape
  frame = jnp.broadcast_to(image_latent, (b, 1, h, w, c)).astype(latents.dtype)
  return latents.at[:, :1].set(frame)


TEXT_IMAGE_TO_VIDEO = TextImageToVideo()


def ti2v_config(i2v_prob: float = DEFAULT_I2V_PROB) -> ml_collections.ConfigDict:
  """The `ti2v` section of a TI2V-5B config."""
  c = ml_collections.ConfigDict()
  c.i2v_prob = i2v_prob  # rows (of clips) trained image-to-video; the rest text-to-video
  return c

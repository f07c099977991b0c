"""Image-to-video (Wan 2.2 I2V-A14B): the model also reads a 20-channel condition, the VAE
latents of a video made of the clip's first frame followed by zeros, after 4 mask channels
(`wan_jax.model.i2v_condition`).

Training: the condition of a clip is built from its own first frame, cropped, flipped and
frame-selected exactly as its latents, and cached beside them (kind `condition`). The loss covers
every latent frame, the first included: the I2V-A14B sampler denoises frame 0 like the others (it
is steered by the condition, not replaced, unlike the 5B TI2V), so the model must learn to
reproduce it. An item with one frame (an image, or a clip read as 1 frame) is not conditioned on
itself (that would only teach copying): it trains as ai-toolkit trains it, with an empty
condition, a degraded copy, or as a static clip (wan_jax/tasks/i2v_images.py).

First-last frame (FLF): a data set's `last_frame_prob` makes that share of its clips' rows
condition on the clip's first AND last frame (upstream's `last_image`: the video encoded is the
first frame, zeros, then the last frame; the mask marks both). That is another VAE encoding of
the same pixels, cached as its own kind (`first_last_condition`) beside the clip's latents and
read into the batch under `condition` in place of the first-frame one, so the step is the same.
One LoRA trained with a probability in (0, 1) learns both ways of being prompted.

Previews start from `preview.images` (one image per prompt), resized and centre-cropped to the
preview size as training crops are, and end on `preview.last_images` where one is given.
The release's boundary and sampling defaults are its variant's (wan_jax/variants.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wan_jax.model.config import I2V_CONDITION_CHANNELS
from wan_jax.model.i2v_condition import encode_condition, i2v_condition
from wan_jax.tasks.base import Task

CONDITION = "condition"
FIRST_LAST = "first_last_condition"  # cache kind: a clip's condition on its first and last frames


@dataclasses.dataclass(frozen=True)
class ImageToVideo(Task):
  name: str = "i2v"
  title: str = "image-to-video"
  needs_preview_images: bool = True
  takes_preview_images: bool = True

  @property
  def pixel_arrays(self) -> Mapping[str, int]:
    return {CONDITION: I2V_CONDITION_CHANNELS}

  def own_pixel_arrays(self, item: Any) -> tuple[str, ...]:
    return (CONDITION,) if item.num_frames > 1 else ()

  def encode_pixels(self, vae: Any, video_BxFxHxWx3: jax.Array) -> dict[str, jax.Array]:
    return {CONDITION: i2v_condition(vae, video_BxFxHxWx3[:, 0], video_BxFxHxWx3.shape[1])}

  @property
  def first_last_arrays(self) -> Mapping[str, str]:
    """cache kind -> batch name: what a clip derives from its first and last frames, read in
    place of the `pixel_arrays` of that name by a row drawn to train first-last-frame."""
    return {FIRST_LAST: CONDITION}

  def encode_first_last(self, vae: Any, video_BxFxHxWx3: jax.Array) -> dict[str, jax.Array]:
    """The `first_last_arrays` of a batch of clips in [-1, 1], by cache kind (traced)."""
    return {FIRST_LAST: i2v_condition(vae, video_BxFxHxWx3[:, 0], video_BxFxHxWx3.shape[1],
                                      last_image=video_BxFxHxWx3[:, -1])}

  def model_condition(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    return batch[CONDITION]

  def preview_condition(self, vae: Any, image: np.ndarray | None, num_frames: int,
                        last_image: np.ndarray | None = None) -> jax.Array:
    """As `Task.preview_condition`; `last_image` (uint8 [H, W, 3] like `image`, or None) is the
    frame the preview ends on (first-last frame)."""
    if image is None:
      raise ValueError("an image-to-video preview needs an image: set preview.images, one path "
                       "per prompt")
    to_unit = lambda x: jnp.asarray(x, jnp.float32)[None] / 127.5 - 1.0
    last = None if last_image is None else to_unit(last_image)
    return encode_condition(vae, to_unit(image), num_frames, last)


IMAGE_TO_VIDEO = ImageToVideo()

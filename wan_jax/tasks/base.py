"""What a training task is: the one place that knows what the model reads besides the noisy
latents, what the caches hold for it, which items it can learn from and what a preview needs.

Text-to-video is the base: the model reads the latents, the timestep and the prompt. A task that
conditions on pixels of the clip (image-to-video's first frame) names the arrays it derives from
an item's pixels; they are cached beside the item's latents, with the same crop, flip and frames,
read into every batch under the same names, and handed to the model as its `condition`.
A new task is one new file in this package and one line in `wan_jax/tasks/__init__.py`; the
TI2V-5B's (wan_jax/tasks/ti2v.py) conditions by replacing latents instead (`model_inputs`,
`sample_inputs`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """What the train step feeds the model and weighs its loss with."""

  latents: jax.Array  # x_t [B, F, H, W, C]
  timestep: jax.Array  # [B], or [B, F] / [B, F, H, W] per latent frame / position (the 5B)
  condition: jax.Array | None
  weights: jax.Array  # the loss weights on the latent grid [B, F, H, W] (or [B, 1, H, W])


# What every task's step reads from a cached batch, with each array's rank.
BASE_BATCH_NDIMS = {"latent_mean": 5, "latent_logvar": 5, "weights": 4, "context": 3,
                    "loss_multiplier": 1}


@dataclasses.dataclass(frozen=True)
class Task:
  """Text-to-video; subclasses override what differs. Frozen and hashable: the compiled step
  takes it as a static setting."""

  name: str = "t2v"
  title: str = "text-to-video"

  def configured(self, cfg: Any) -> Task:
    """The task with its settings read from the run's config (none by default)."""
    return self

  @property
  def condition_channels(self) -> int:
    """Input channels the model reads after the 16 noisy latents (0: none)."""
    return sum(self.pixel_arrays.values())

  @property
  def pixel_arrays(self) -> Mapping[str, int]:
    """name -> channels of each [frames, h, w, C] latent-grid array derived from an item's pixels
    (cached as its own kind, batched under that name)."""
    return {}

  @property
  def batch_ndims(self) -> dict[str, int]:
    """Every array the step reads from a batch, with its rank (batch axis included)."""
    return {**BASE_BATCH_NDIMS, **{k: 5 for k in self.pixel_arrays}}

  def skip_reason(self, item: Any) -> str | None:
    """Why this task cannot learn from a scanned item (None: it can). The item is skipped and
    named in the data summary."""
    return None

  def own_pixel_arrays(self, item: Any) -> tuple[str, ...]:
    """Which `pixel_arrays` an item derives from its own pixels (cached beside its latents);
    the others are zero for it unless another recipe fills them (wan_jax/tasks/i2v_images.py)."""
    return tuple(self.pixel_arrays)

  def encode_pixels(self, vae: Any, video_BxFxHxWx3: jax.Array) -> dict[str, jax.Array]:
    """The `pixel_arrays` of a batch of clips in [-1, 1] (traced: runs inside one jit)."""
    return {}

  @property
  def first_last_arrays(self) -> Mapping[str, str]:
    """cache kind -> batch name: what a clip derives from its first and last frames, read in
    place of the `pixel_arrays` of that name by a row drawn to train first-last frame (none:
    the task has no last-frame condition)."""
    return {}

  def encode_first_last(self, vae: Any, video_BxFxHxWx3: jax.Array) -> dict[str, jax.Array]:
    """The `first_last_arrays` of a batch of clips in [-1, 1], by cache kind (traced)."""
    return {}

  def model_condition(self, batch: Mapping[str, jax.Array]) -> jax.Array | None:
    """The model's `condition` input assembled from a batch (None: the model takes none)."""
    return None

  def model_inputs(self, batch: Mapping[str, jax.Array], mean_x0: jax.Array, x_t: jax.Array,
                   t_B: jax.Array, key: jax.Array) -> ModelInputs:
    """What the step feeds the model, from the clean latents (the posterior mean, normalised:
    what a sampler's encoded image is), the noised x_t, the drawn timesteps and a key of the
    task's own (traced, inside the step). The default: x_t at t,
    the batch's condition, the batch's loss weights; a task that conditions by replacing
    latents (the TI2V-5B's first frame) overrides it."""
    return ModelInputs(x_t, t_B, self.model_condition(batch), batch["weights"])

  # Previews: a start image per prompt is required (image-to-video), optional (the TI2V-5B:
  # "" or no list at all previews text-to-video) or refused (text-to-video).
  needs_preview_images: bool = False
  takes_preview_images: bool = False

  def preview_condition(self, vae: Any, image: np.ndarray | None, num_frames: int,
                        last_image: np.ndarray | None = None) -> jax.Array | None:
    """The condition one preview samples with (None for text-to-video), from its start image
    (and the last image it ends on, first-last frame) as uint8 pixels [H, W, 3] already at the
    preview's size (the caller reads and crops it: wan_jax.data.examples.read_start_image)."""
    return None

  def sample_inputs(self, latents: jax.Array, t_B: jax.Array,
                    condition: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(model input, timestep, model condition) at one sampler step from the sampler's latents
    and the preview's condition: by default the latents at t, the condition as channels."""
    return latents, t_B, condition

  def finish_sample(self, latents: jax.Array, condition: jax.Array | None) -> jax.Array:
    """The sampled latents as they are decoded (a task that replaces latents puts them back)."""
    return latents

  def empty_arrays(self, latent_grid: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Zero `pixel_arrays` for a zero-weight stand-in row of a latent grid (frames, h, w)."""
    return {k: np.zeros((*latent_grid, c), np.float32) for k, c in self.pixel_arrays.items()}

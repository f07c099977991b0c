"""Text-to-video (Wan 2.2 T2V-A14B): the model reads the noisy latents, the timestep and the
prompt; nothing else is cached or conditioned. Everything is `Task`'s defaults."""

from __future__ import annotations

from wan_jax.tasks.base import Task

TEXT_TO_VIDEO = Task()

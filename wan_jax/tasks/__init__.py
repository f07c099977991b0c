"""Training tasks: text-to-video, image-to-video and the TI2V-5B's text-and-image-to-video, each
one object (`Task`) that owns what the model reads besides the noisy latents, what the caches
hold for it and what a preview needs."""

from __future__ import annotations

from wan_jax.tasks.base import Task
from wan_jax.tasks.i2v import IMAGE_TO_VIDEO
from wan_jax.tasks.t2v import TEXT_TO_VIDEO
from wan_jax.tasks.ti2v import TEXT_IMAGE_TO_VIDEO

TASKS: dict[str, Task] = {t.name: t for t in (TEXT_TO_VIDEO, IMAGE_TO_VIDEO, TEXT_IMAGE_TO_VIDEO)}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name]


__all__ = ["IMAGE_TO_VIDEO", "TASKS", "TEXT_IMAGE_TO_VIDEO", "TEXT_TO_VIDEO", "Task", "get_task"]

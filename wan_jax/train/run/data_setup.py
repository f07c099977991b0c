"""The run's data: generated demo folders where the config names none, the cached pipeline, and
each batch as global arrays on the mesh."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Iterable

import jax
import ml_collections
import numpy as np

from wan_jax.data.config import resolutions
from wan_jax.data.demo import (
  DEMO_CLIP_SIZE,
  make_clip_dataset,
  make_demo_dataset,
  make_preview_image,
)
from wan_jax.data.pipeline import Pipeline, build_pipeline
from wan_jax.tasks.i2v_images import image_training
from wan_jax.train.run import loading
from wan_jax.train.step.sharding import global_batch_from_local


def prepare_datasets(cfg: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
  """The run's config with generated data where it names none (a copy: the caller's config is
  never written to). The tiny demo trains on a generated data set unless a folder was given
  (images and a clip; clips only for image-to-video), and previews an image-to-video model from
  a generated image; random real-size models on generated clips at the data set's largest
  resolution and frame count."""
  if not loading.is_tiny(cfg) and not loading.random_weights(cfg):
    return cfg
  cfg = copy.deepcopy(cfg)
  task = loading.task(cfg)
  for ds in cfg.datasets:
    if ds.folder_path:
      continue
    if not loading.random_weights(cfg) and not task.pixel_arrays:
      media, masks = make_demo_dataset(workdir / "demo_data")
    elif not loading.random_weights(cfg):  # clips whose first frame conditions the rest
      media, masks = make_clip_dataset(workdir / "demo_data", *DEMO_CLIP_SIZE,
                                       max(int(ds.num_frames), 5), clips=3)
    else:
      side = max(resolutions(ds))  # buckets are area-based: 16:9 clips of area side^2
      m = loading.variant(cfg).geometry.side_multiple
      width, height = m * math.ceil(side * 4 / 3 / m), m * math.ceil(side * 3 / 4 / m)
      media, masks = make_clip_dataset(workdir / "demo_data", width, height, int(ds.num_frames))
    ds.folder_path, ds.mask_path = str(media), str(masks)
  # after the data set: the demo's folder is written whole or not at all (build_folder_once)
  if task.takes_preview_images and cfg.preview.every and not list(cfg.preview.images):
    image = str(make_preview_image(workdir / "demo_data", cfg.preview.width, cfg.preview.height))
    n = len(cfg.preview.prompts)  # optional images (TI2V): the last prompt starts from one
    cfg.preview.images = [image] * n if task.needs_preview_images else [""] * (n - 1) + [image]
  return cfg


def build_data(cfg: ml_collections.ConfigDict, workdir: Path, enc: loading.Encoders,
               mesh: jax.sharding.Mesh, progress: bool) -> Pipeline:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.train.batch_size % shards:
    raise ValueError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the mesh's "
                     f"data x fsdp = {shards}")
  extra = [*cfg.preview.prompts, cfg.preview.negative_prompt] if cfg.preview.every else []
  task = loading.task(cfg)
  return build_pipeline(list(cfg.datasets), cfg.train.batch_size, cfg.seed,
                        num_workers=cfg.data.num_workers, task=task,
                        images=image_training(cfg, bool(task.pixel_arrays)),
                        caches=loading.cache_settings(cfg, enc), load_vae=enc.load_vae,
                        load_text=enc.load_text, extra_prompts=extra, progress=progress,
                        latent=loading.variant(cfg).geometry)


def global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                 keys: Iterable[str]) -> dict[str, jax.Array]:
  """This process's rows of a batch as global arrays over the mesh (the step's inputs, `keys`,
  only: the task's `batch_ndims`)."""
  return global_batch_from_local({k: np.asarray(batch[k], np.float32) for k in keys}, mesh)

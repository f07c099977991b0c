"""What a run loads, from its config: the experts it trains (only those), and, lazily, the VAE,
umT5 and tokenizer (only when a cache must be built or a preview decoded).

`model.arch = "tiny"` builds random tiny models instead (the demo and the tests), and
`model.random_weights = True` random real-size ones drawn on the device (the trainer at full size
without a download); their cache identities name the seed, so a random cache is never mistaken
for a real one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import ml_collections
from flax import nnx

from wan_jax.data.caches import CacheSettings, files_id
from wan_jax.data.demo import make_demo_tokenizer
from wan_jax.data.probe_cache import default_cache_dir
from wan_jax.model.config import WanConfig
from wan_jax.model.latent_geometry import LatentGeometry
from wan_jax.model.transformer import WanTransformer
from wan_jax.model.umt5 import UMT5Encoder
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import VAEConfig
from wan_jax.tasks import TASKS, Task
from wan_jax.train.run.random_weights import random_module
from wan_jax.train.step.expert_schedule import HIGH, LOW
from wan_jax.variants import VARIANTS, Variant, for_task, get_variant
from wan_jax.weights.load import expert_arch, load_transformer, task_of
from wan_jax.weights.load_encoders import (
  component_location,
  load_text_encoder,
  load_tokenizer,
  load_vae,
)

TINY_SEEDS = {HIGH: 0, LOW: 1, "vae": 2, "text": 3}


@dataclasses.dataclass
class Encoders:
  """Lazy loaders for the frozen encoders, and what identifies them for the caches."""

  vae_config: VAEConfig  # the latent normalisation is needed even when the VAE is not loaded
  load_vae: Callable[[], WanVAE]
  load_text: Callable[[], tuple[Any, UMT5Encoder]]
  vae_id: str
  text_id: str
  text_len: int


def random_weights(cfg: ml_collections.ConfigDict) -> bool:
  """Models of the arch's real sizes with weights drawn on the device (`model.random_weights`):
  no checkpoint is read. With arch "tiny" the same path runs at the tiny sizes (tests)."""
  return bool(cfg.model.random_weights)


def variant(cfg: ml_collections.ConfigDict) -> Variant:
  """The model variant model.arch names (wan_jax/variants.py)."""
  return get_variant(cfg.model.arch)


def is_tiny(cfg: ml_collections.ConfigDict) -> bool:
  return variant(cfg).tiny


def task(cfg: ml_collections.ConfigDict) -> Task:
  """The task model.arch trains (text-to-video, image-to-video, ...)."""
  check_arch(cfg)
  return variant(cfg).task_object.configured(cfg)


def check_arch(cfg: ml_collections.ConfigDict) -> None:
  variant(cfg)
  if random_weights(cfg) and cfg.model.name_or_path:
    raise ValueError("model.random_weights=True builds random experts; it cannot be combined "
                     f"with model.name_or_path={cfg.model.name_or_path!r}")
  if not is_tiny(cfg) and not random_weights(cfg) and not cfg.model.name_or_path:
    raise ValueError("model.name_or_path is required: a folder made by convert/wan22.py (or a "
                     "Wan 2.2 release folder); e.g. --config.model.name_or_path=/ckpt/wan22-jax")


def check_checkpoint_task(cfg: ml_collections.ConfigDict) -> None:
  """A checkpoint of the other task is refused before anything loads (its patch embedding
  would not fit the batches)."""
  if is_tiny(cfg) or random_weights(cfg):
    return
  want = variant(cfg).task
  try:
    have = task_of(cfg.model.name_or_path)
  except (OSError, ValueError):  # unreadable: the loader names the problem when it loads
    return
  if have is not None and have != want:
    other = for_task(have)
    fix = (f"use {other.config_file}" if other.single_expert or variant(cfg).single_expert
           else f"set model.arch={other.arch!r} (or use {other.config_file})")
    raise ValueError(f"model.arch={cfg.model.arch!r} trains {TASKS[want].title}, but "
                     f"{cfg.model.name_or_path} holds {TASKS[have].title} experts "
                     f"({other.title}); {fix}")


def trained_experts(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  out = tuple(e for e, on in ((HIGH, cfg.model.train_high_noise),
                              (LOW, cfg.model.train_low_noise)) if on)
  if not out:
    raise ValueError("model.train_high_noise and model.train_low_noise are both False: "
                     "nothing to train")
  return out


@dataclasses.dataclass(frozen=True)
class ExpertRuntime:
  """The choices a run makes for an expert that its checkpoint does not fix (WanConfig's fields
  outside ARCH_FIELDS), read once from the config."""

  param_dtype: str
  compute_dtype: str
  attention: str
  remat: str
  quantize: str

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, remat: str) -> ExpertRuntime:
    dtype = str(cfg.model.dtype)
    return cls(param_dtype=dtype, compute_dtype=dtype, attention=str(cfg.model.attention),
               remat=remat, quantize=str(cfg.model.quantize))


def expert_config(cfg: ml_collections.ConfigDict, expert: str, remat: str) -> WanConfig:
  """The expert's architecture and runtime settings, read without loading its weights."""
  check_arch(cfg)
  runtime = dataclasses.asdict(ExpertRuntime.from_config(cfg, remat))
  if is_tiny(cfg) or random_weights(cfg):
    return variant(cfg).transformer(**runtime)
  name = variant(cfg).expert_name(expert)
  return WanConfig.from_arch_dict(expert_arch(cfg.model.name_or_path, name), **runtime)


def load_expert(cfg: ml_collections.ConfigDict, expert: str, remat: str = "full") -> WanTransformer:
  """One expert, built (tiny) or read from the checkpoint in model.dtype."""
  model_cfg = expert_config(cfg, expert, remat)
  if random_weights(cfg):
    return random_module(lambda: WanTransformer(model_cfg, rngs=nnx.Rngs(0)),
                         int(cfg.seed) * 10 + TINY_SEEDS[expert])
  if is_tiny(cfg):
    return WanTransformer(model_cfg, rngs=nnx.Rngs(TINY_SEEDS[expert]))
  return load_transformer(cfg.model.name_or_path, cfg.model.dtype,
                          expert=variant(cfg).expert_name(expert), attention=cfg.model.attention,
                          remat=remat, quantize=model_cfg.quantize)


def encoders(cfg: ml_collections.ConfigDict, workdir: Path) -> Encoders:
  check_arch(cfg)
  m = cfg.model
  if random_weights(cfg):
    return _random_encoders(cfg, workdir)
  v = variant(cfg)
  if v.tiny:
    tokenizer_dir = workdir / "tokenizer"
    vae_tag = "" if v.vae().arch_dict() == VARIANTS["tiny"].vae().arch_dict() else f"-{v.arch}"
    tag = f"tiny-v2{vae_tag}-seed{TINY_SEEDS['vae']}-{m.vae_dtype}"  # v2: weights drawn on the host
    return Encoders(
        v.vae(), lambda: WanVAE(v.vae(param_dtype=m.vae_dtype, compute_dtype=m.vae_dtype),
                                rngs=nnx.Rngs(TINY_SEEDS["vae"])),
        lambda: (load_tokenizer(make_demo_tokenizer(tokenizer_dir)),
                 UMT5Encoder(v.text_encoder(), rngs=nnx.Rngs(TINY_SEEDS["text"]))),
        vae_id=tag, text_id=f"tiny-umt5-v2-seed{TINY_SEEDS['text']}",
        text_len=v.transformer().text_len)
  vae_path = m.vae_path or m.name_or_path
  text_path = m.text_encoder_path or m.name_or_path
  tok_path = m.tokenizer_path or m.name_or_path
  return Encoders(
      v.vae(), lambda: _checked_vae(load_vae(vae_path, m.vae_dtype), v, vae_path),
      lambda: (load_tokenizer(tok_path), load_text_encoder(text_path, m.text_encoder_dtype)),
      vae_id=f"{_component_id(vae_path, 'vae')}-{m.vae_dtype}",
      text_id=(f"{_component_id(text_path, 'text_encoder')}-{_component_id(tok_path, 'tokenizer')}"
               f"-{m.text_encoder_dtype}"),
      text_len=512)


def _checked_vae(vae: WanVAE, v: Variant, path: str) -> WanVAE:
  """The loaded VAE, refused in one line when its latents are not the variant's (a Wan 2.1 VAE
  for the 5B, or the 5B's for an A14B): every cached latent would have the wrong shape."""
  have, want = LatentGeometry.of(vae.config), LatentGeometry.of(v.vae())
  if (have.temporal, have.spatial, have.channels) != (want.temporal, want.spatial, want.channels):
    other = "the Wan 2.2 VAE (TI2V-5B)" if have.channels == 48 else "a Wan 2.1 VAE (A14B)"
    raise ValueError(f"the VAE at {path} is {other}: {have.channels} channels, "
                     f"{have.spatial}x{have.spatial} pixels per latent cell; {v.title} needs "
                     f"{want.channels} and {want.spatial}x{want.spatial} (model.vae_path)")
  return vae


def _random_encoders(cfg: ml_collections.ConfigDict, workdir: Path) -> Encoders:
  """The VAE and umT5 of the arch's sizes (the released Wan 2.1 VAE and umT5-XXL for the A14B)
  with random weights, and the demo's word tokenizer (its ids index any umT5 vocabulary)."""
  m, seed, v = cfg.model, int(cfg.seed), variant(cfg)
  vae_seed, text_seed = seed * 10 + TINY_SEEDS["vae"], seed * 10 + TINY_SEEDS["text"]
  vae_sizes, text_sizes = v.vae, v.text_encoder
  vae_cfg = vae_sizes(param_dtype=m.vae_dtype, compute_dtype=m.vae_dtype)
  text_cfg = text_sizes(param_dtype=m.text_encoder_dtype, compute_dtype=m.text_encoder_dtype)
  tag = f"random-{m.arch}-seed"
  return Encoders(
      vae_sizes(),
      lambda: random_module(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(0)), vae_seed),
      lambda: (load_tokenizer(make_demo_tokenizer(workdir / "tokenizer")),
               random_module(lambda: UMT5Encoder(text_cfg, rngs=nnx.Rngs(0)), text_seed)),
      vae_id=f"{tag}{vae_seed}-vae-{m.vae_dtype}",
      text_id=f"{tag}{text_seed}-umt5-{m.text_encoder_dtype}",
      text_len=v.transformer().text_len)


def _component_id(path: str, component: str) -> str:
  """Identity of one component's files only (touching an expert must not rebuild the caches)."""
  return files_id(component_location(path, component))


def cache_settings(cfg: ml_collections.ConfigDict, enc: Encoders) -> CacheSettings:
  root = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else default_cache_dir() / "encoded"
  return CacheSettings(root=root, vae_id=enc.vae_id, text_id=enc.text_id,
                       text_len=enc.text_len, dtype=cfg.cache.dtype)

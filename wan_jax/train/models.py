"""What a run loads, from its config: the experts it trains (only those), and, lazily, the VAE,
umT5 and tokenizer (only when a cache must be built or a preview decoded).

`model.arch = "tiny"` builds random tiny models instead (the demo and the tests); their cache
identities name the seed, so a demo cache is never mistaken for a real one.
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
from wan_jax.model.config import tiny
from wan_jax.model.transformer import WanTransformer
from wan_jax.model.umt5 import UMT5Encoder, umt5_tiny
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import VAEConfig, tiny_vae, wan21_vae
from wan_jax.train.experts import CHECKPOINT_NAMES, HIGH, LOW
from wan_jax.weights.load import load_transformer
from wan_jax.weights.load_encoders import (component_location, load_text_encoder, load_tokenizer,
                                           load_vae)

ARCHS = ("wan22_t2v_a14b", "tiny")
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


def check_arch(cfg: ml_collections.ConfigDict) -> None:
  if cfg.model.arch not in ARCHS:
    raise ValueError(f"model.arch must be one of {ARCHS}, got {cfg.model.arch!r}")
  if cfg.model.arch != "tiny" and not cfg.model.name_or_path:
    raise ValueError("model.name_or_path is required: a folder made by convert/wan22.py (or a "
                     "Wan 2.2 release folder); e.g. --config.model.name_or_path=/ckpt/wan22-jax")


def trained_experts(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  out = tuple(e for e, on in ((HIGH, cfg.model.train_high_noise),
                              (LOW, cfg.model.train_low_noise)) if on)
  if not out:
    raise ValueError("model.train_high_noise and model.train_low_noise are both False: "
                     "nothing to train")
  return out


def _runtime(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  remat = cfg.train.remat_policy if cfg.train.gradient_checkpointing else "none"
  return {"attention": cfg.model.attention, "remat": remat}


def load_expert(cfg: ml_collections.ConfigDict, expert: str) -> WanTransformer:
  """One expert, built (tiny) or read from the checkpoint in model.dtype."""
  check_arch(cfg)
  runtime = _runtime(cfg)
  if cfg.model.arch == "tiny":
    dtype = cfg.model.dtype
    model_cfg = tiny(param_dtype=dtype, compute_dtype=dtype, **runtime)
    return WanTransformer(model_cfg, rngs=nnx.Rngs(TINY_SEEDS[expert]))
  return load_transformer(cfg.model.name_or_path, cfg.model.dtype,
                          expert=CHECKPOINT_NAMES[expert], **runtime)


def encoders(cfg: ml_collections.ConfigDict, workdir: Path) -> Encoders:
  check_arch(cfg)
  m = cfg.model
  if m.arch == "tiny":
    text_len = tiny().text_len
    tokenizer_dir = workdir / "tokenizer"
    tag = f"tiny-seed{TINY_SEEDS['vae']}-{m.vae_dtype}"
    return Encoders(
        tiny_vae(), lambda: WanVAE(tiny_vae(param_dtype=m.vae_dtype, compute_dtype=m.vae_dtype),
                                   rngs=nnx.Rngs(TINY_SEEDS["vae"])),
        lambda: (load_tokenizer(make_demo_tokenizer(tokenizer_dir)),
                 UMT5Encoder(umt5_tiny(), rngs=nnx.Rngs(TINY_SEEDS["text"]))),
        vae_id=tag, text_id=f"tiny-umt5-seed{TINY_SEEDS['text']}", text_len=text_len)
  vae_path = m.vae_path or m.name_or_path
  text_path = m.text_encoder_path or m.name_or_path
  tok_path = m.tokenizer_path or m.name_or_path
  return Encoders(
      wan21_vae(), lambda: load_vae(vae_path, m.vae_dtype),
      lambda: (load_tokenizer(tok_path), load_text_encoder(text_path, m.text_encoder_dtype)),
      vae_id=f"{_component_id(vae_path, 'vae')}-{m.vae_dtype}",
      text_id=(f"{_component_id(text_path, 'text_encoder')}-{_component_id(tok_path, 'tokenizer')}"
               f"-{m.text_encoder_dtype}"),
      text_len=512)


def _component_id(path: str, component: str) -> str:
  """Identity of one component's files only (touching an expert must not rebuild the caches)."""
  return files_id(component_location(path, component))


def cache_settings(cfg: ml_collections.ConfigDict, enc: Encoders) -> CacheSettings:
  root = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else default_cache_dir() / "encoded"
  return CacheSettings(root=root, vae_id=enc.vae_id, text_id=enc.text_id,
                       text_len=enc.text_len, dtype=cfg.cache.dtype)

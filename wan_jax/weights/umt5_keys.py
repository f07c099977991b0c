"""Key maps from umT5 encoder checkpoints to our parameter names, and the loader around them.

Two PyTorch layouts exist: Wan's own `.pth` (`blocks.3.attn.q.weight`) and Hugging Face's
UMT5EncoderModel, also used by diffusers' `text_encoder/` (`encoder.block.3.layer.0.
SelfAttention.q.weight`). Ours is per layer `blocks.3.attn.q.kernel`, stacked over layers later.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from flax import nnx

from wan_jax.model.umt5 import UMT5Config, UMT5Encoder
from wan_jax.weights.assemble import assemble
from wan_jax.weights.layouts import Layout
from wan_jax.weights.safetensors_reader import CheckpointError

LAYOUTS = ("wan", "hf")
_HF_TIED_EMBEDDING = "encoder.embed_tokens.weight"

# ours -> source key, outside the blocks.
_TOP = {
    "wan": {"token_embedding.embedding": "token_embedding.weight",
            "final_norm.weight": "norm.weight"},
    "hf": {"token_embedding.embedding": "shared.weight",
           "final_norm.weight": "encoder.final_layer_norm.weight"},
}
# ours -> source key inside one block, after the layout's block prefix.
_BLOCK_PREFIX = {"wan": "blocks.{i}.", "hf": "encoder.block.{i}."}
_BLOCK = {
    "wan": {
        "attn_norm.weight": "norm1.weight",
        **{f"attn.{p}.kernel": f"attn.{p}.weight" for p in "qkvo"},
        "position_bias.embedding": "pos_embedding.embedding.weight",
        "ffn_norm.weight": "norm2.weight",
        "ffn.gate.kernel": "ffn.gate.0.weight",
        "ffn.fc1.kernel": "ffn.fc1.weight",
        "ffn.fc2.kernel": "ffn.fc2.weight",
    },
    "hf": {
        "attn_norm.weight": "layer.0.layer_norm.weight",
        **{f"attn.{p}.kernel": f"layer.0.SelfAttention.{p}.weight" for p in "qkvo"},
        "position_bias.embedding": "layer.0.SelfAttention.relative_attention_bias.weight",
        "ffn_norm.weight": "layer.1.layer_norm.weight",
        "ffn.gate.kernel": "layer.1.DenseReluDense.wi_0.weight",
        "ffn.fc1.kernel": "layer.1.DenseReluDense.wi_1.weight",
        "ffn.fc2.kernel": "layer.1.DenseReluDense.wo.weight",
    },
}
_LAYER_RE = {"wan": re.compile(r"blocks\.(\d+)\."), "hf": re.compile(r"encoder\.block\.(\d+)\.")}


class Store(Protocol):
  """What `convert` reads: a safetensors TensorStore or a .pth reader."""

  def keys(self) -> list[str]: ...
  def shape(self, key: str) -> tuple[int, ...]: ...
  def read(self, key: str) -> np.ndarray: ...


def layout_of(keys) -> Layout | None:
  """The text encoder's layout: "wan" or "hf" (UMT5EncoderModel) naming, or None."""
  keys = set(keys)
  if "token_embedding.weight" in keys and any(k.startswith("blocks.") for k in keys):
    return Layout("text_encoder", "wan")
  if any(k.startswith("encoder.block.") for k in keys):
    return Layout("text_encoder", "hf")
  return None


def detect_layout(keys) -> str:
  """"wan" or "hf" from the key names; a ValueError naming a few keys otherwise."""
  keys = set(keys)
  layout = layout_of(keys)
  if layout is not None:
    return layout.naming
  raise ValueError("unknown umT5 key layout: expected Wan keys (token_embedding.weight, "
                   "blocks.N.*) or Hugging Face UMT5EncoderModel keys (encoder.block.N.*); "
                   f"first keys: {sorted(keys)[:8]}")


def source_map(layout: str, num_layers: int) -> dict[str, str]:
  """Our per-layer name -> source key, top-level tensors first, then layer by layer."""
  out = dict(_TOP[layout])
  for i in range(num_layers):
    prefix = _BLOCK_PREFIX[layout].format(i=i)
    out.update({f"blocks.{i}.{ours}": prefix + src for ours, src in _BLOCK[layout].items()})
  return out


def param_shapes(cfg: UMT5Config) -> dict[str, tuple[int, ...]]:
  """Our per-layer name -> shape (kernels [in, out])."""
  d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
  block = {"attn_norm.weight": (d,), "attn.q.kernel": (d, inner), "attn.k.kernel": (d, inner),
           "attn.v.kernel": (d, inner), "attn.o.kernel": (inner, d),
           "position_bias.embedding": (cfg.num_buckets, cfg.num_heads), "ffn_norm.weight": (d,),
           "ffn.gate.kernel": (d, ff), "ffn.fc1.kernel": (d, ff), "ffn.fc2.kernel": (ff, d)}
  out = {"token_embedding.embedding": (cfg.vocab_size, d), "final_norm.weight": (d,)}
  for i in range(cfg.num_layers):
    out.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  return out


def _source_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """PyTorch linears are [out, in]; everything else is stored as we store it."""
  return shape[::-1] if ours.endswith(".kernel") else shape


def _with_hf_embedding(shapes: dict[str, tuple], layout: str) -> dict[str, tuple]:
  """An HF file may keep the tied embedding only as encoder.embed_tokens.weight."""
  if layout == "hf" and "shared.weight" not in shapes and _HF_TIED_EMBEDDING in shapes:
    return {**shapes, "shared.weight": shapes[_HF_TIED_EMBEDDING]}
  return shapes


def infer_config(shapes: dict[str, tuple], layout: str, **runtime) -> UMT5Config:
  """Architecture from tensor shapes alone (heads from the bias table); runtime: dtypes."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  shapes = _with_hf_embedding(shapes, layout)
  layers = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_RE[layout].match(k))})
  if not layers or layers != list(range(len(layers))):
    raise CheckpointError(f"umT5 blocks are not numbered 0..N-1: {layers[:50]}")
  names = source_map(layout, 1)

  def shape(ours: str) -> tuple[int, ...]:
    key = names[ours]
    if key not in shapes:
      raise CheckpointError(f"umT5 checkpoint lacks {key!r}")
    return tuple(shapes[key])

  vocab, d_model = shape("token_embedding.embedding")
  num_buckets, num_heads = shape("blocks.0.position_bias.embedding")
  inner = shape("blocks.0.attn.q.kernel")[0]
  if inner % num_heads:
    raise CheckpointError(f"{names['blocks.0.attn.q.kernel']}: {inner} rows do not split into "
                          f"{num_heads} heads (from the bias table)")
  return UMT5Config(vocab_size=vocab, d_model=d_model, num_heads=num_heads,
                    d_kv=inner // num_heads, d_ff=shape("blocks.0.ffn.gate.kernel")[0],
                    num_layers=len(layers), num_buckets=num_buckets, **runtime)


def _listing(title: str, items: list[str]) -> str:
  more = " ..." if len(items) > 20 else ""
  return f"  {title} ({len(items)}): {items[:20]}{more}"


def check(store: Store, layout: str, cfg: UMT5Config) -> None:
  """Missing, unexpected and mis-shaped tensors, all in one CheckpointError."""
  keys = list(store.keys())
  present = _with_hf_embedding({k: tuple(store.shape(k)) for k in keys}, layout)
  names, shapes = source_map(layout, cfg.num_layers), param_shapes(cfg)
  wanted = set(names.values())
  allowed = wanted | ({_HF_TIED_EMBEDDING} if layout == "hf" else set())
  missing = sorted(wanted - set(present))
  unexpected = sorted(set(present) - allowed)
  wrong = [f"{src} {present[src]} (expected {_source_shape(ours, shapes[ours])})"
           for ours, src in names.items()
           if src in present and present[src] != _source_shape(ours, shapes[ours])]
  tied = present.get(_HF_TIED_EMBEDDING) if layout == "hf" else None
  if tied is not None and tied != present.get("shared.weight"):
    wrong.append(f"{_HF_TIED_EMBEDDING} {tied} (expected the tied shared.weight shape "
                 f"{present.get('shared.weight')})")
  if missing or unexpected or wrong:
    lines = [f"umT5 checkpoint ({layout} layout) does not match {cfg}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
      if items:
        lines.append(_listing(title, items))
    raise CheckpointError("\n".join(lines))


def convert(store: Store, dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(our per-layer name, tensor in `dtype`), top-level first then layer by layer.

  Everything is checked before the first tensor is read, so a bad file fails fast.
  """
  keys = list(store.keys())
  layout = detect_layout(keys)
  cfg = infer_config({k: tuple(store.shape(k)) for k in keys}, layout)
  check(store, layout, cfg)
  have = set(keys)
  for ours, src in source_map(layout, cfg.num_layers).items():
    if src not in have:  # only the HF embedding, stored under its tied name
      src = _HF_TIED_EMBEDDING
    array = np.asarray(store.read(src))
    if ours.endswith(".kernel"):
      array = array.T
    yield ours, np.ascontiguousarray(array.astype(dtype, copy=False))


def build_encoder(cfg: UMT5Config, params: dict[str, np.ndarray]) -> UMT5Encoder:
  """The encoder around per-layer tensors (consumed from `params` to free host memory)."""
  return assemble(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)), params, stacked="blocks",
                  num_layers=cfg.num_layers)

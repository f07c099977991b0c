"""Files users take away: a LoRA in the layout ComfyUI and diffusers read, or a full fine-tune in
the original Wan key layout. Both are written to a temporary name and renamed into place, so a
crash never leaves a truncated file under the real name.

LoRA keys: `diffusion_model.blocks.N.<module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r]
and `.alpha` (a scalar; both read the scale as alpha / r). diffusers maps the original names to
its own (`WanLoraLoaderMixin.lora_state_dict`), ComfyUI matches `diffusion_model.<module>` to the
model weight `<module>.weight`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from wan_jax.files import atomic_path
from wan_jax.model.lora import (
  DEFAULT_TARGETS,
  FROZEN,
  block_linear,
  lora_settings,
  merged_kernel,
)
from wan_jax.model.transformer import WanTransformer
from wan_jax.weights.convert import numpy_dtype
from wan_jax.weights.safetensors_reader import DTYPES, SafetensorsFile
from wan_jax.weights.transformer_keys import parameter_map

LORA_PREFIX = "diffusion_model."
FULL_PREFIXES = ("", "model.diffusion_model.")  # what Wan's code, ComfyUI and diffusers all read
_RESERVED = ("format", "lora_rank", "lora_alpha", "lora_targets", "wan_jax_config")
_CODES = {np.dtype(t): code for code, t in DTYPES.items()}
_LORA_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\."
                       r"(lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha)$")
_SUFFIX = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}


class NonFiniteWeights(ValueError):
  """An export would have written NaN or infinite weights."""


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One tensor of a file being written; `make` runs only when its bytes are due."""

  key: str
  shape: tuple[int, ...]
  dtype: np.dtype
  make: Callable[[], np.ndarray]


def _write_atomic(path: Path, entries: list[_Entry], metadata: dict[str, str]) -> Path:
  """A safetensors file written one tensor at a time (a 14B export never sits in host memory
  whole), fsynced, then renamed over `path`."""
  header: dict[str, object] = {"__metadata__": metadata}
  offset = 0
  for e in entries:
    size = math.prod(e.shape) * e.dtype.itemsize
    header[e.key] = {"dtype": _CODES[e.dtype], "shape": list(e.shape),
                     "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  path = Path(path).expanduser()
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for e in entries:
      array = np.asarray(e.make(), dtype=e.dtype)
      if array.shape != e.shape:
        raise AssertionError(f"{e.key}: made {array.shape}, header says {e.shape}")
      if not np.isfinite(array.astype(np.float32, copy=False)).all():
        raise NonFiniteWeights(f"{path.name}: tensor {e.key} holds NaN or infinite values; the "
                               "file was not written")
      f.write(np.ascontiguousarray(array.reshape(-1)).view(np.uint8))
    f.flush()
    os.fsync(f.fileno())
  return path


def _metadata(ours: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
  extra = dict(extra or {})
  bad = {k: v for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str))}
  if bad:
    raise TypeError(f"safetensors metadata must map str to str; got {bad}")
  clash = sorted(set(extra) & set(_RESERVED))
  if clash:
    raise ValueError(f"metadata keys {clash} are written by wan_jax itself")
  return {**ours, **extra}


def _uniform(values: dict[str, object]) -> str:
  """One value as text when all targets share it, else a JSON object target -> value."""
  distinct = set(values.values())
  return str(distinct.pop()) if len(distinct) == 1 else json.dumps(values)


def save_lora(model: WanTransformer, path: str | os.PathLike, *,
              metadata: dict[str, str] | None = None, dtype: str = "bfloat16") -> Path:
  """The model's adapters as one safetensors file (A and B in `dtype`, alpha in fp32)."""
  settings = lora_settings(model)
  if not settings:
    raise ValueError("the model has no LoRA adapters (call add_lora first)")
  np_dtype = numpy_dtype(dtype)
  entries = []
  for target, (rank, alpha) in settings.items():
    linear = block_linear(model, target)
    a_LxIxR, b_LxRxO = np.asarray(linear.lora_a[...]), np.asarray(linear.lora_b[...])
    fan_in, fan_out = a_LxIxR.shape[1], b_LxRxO.shape[2]
    for i in range(model.config.num_layers):
      module = f"{LORA_PREFIX}blocks.{i}.{target}"
      entries += [
          _Entry(f"{module}.lora_A.weight", (rank, fan_in), np_dtype, a_LxIxR[i].transpose),
          _Entry(f"{module}.lora_B.weight", (fan_out, rank), np_dtype, b_LxRxO[i].transpose),
          _Entry(f"{module}.alpha", (), np.dtype(np.float32),
                 functools.partial(np.float32, alpha)),
      ]
  ours = {"format": "pt", "wan_jax_config": json.dumps(model.config.arch_dict()),
          "lora_targets": json.dumps(list(settings)),
          "lora_rank": _uniform({t: r for t, (r, _) in settings.items()}),
          "lora_alpha": _uniform({t: a for t, (_, a) in settings.items()})}
  return _write_atomic(Path(path), entries, _metadata(ours, metadata))


def _read_modules(file: SafetensorsFile) -> dict[str, dict[int, dict[str, str]]]:
  """target -> layer -> {lora_A.weight | lora_B.weight | alpha: key in the file}."""
  modules: dict[str, dict[int, dict[str, str]]] = {}
  for key in file.keys():  # noqa: SIM118 (not a dict)
    m = _LORA_KEY.match(key)
    if m is None or m.group(2) not in DEFAULT_TARGETS:
      raise ValueError(f"{file.path}: {key!r} is not a LoRA tensor of a Wan block linear "
                       f"({LORA_PREFIX}blocks.N.<{'|'.join(DEFAULT_TARGETS)}>.lora_A.weight ...)")
    layer, target, suffix = int(m.group(1)), m.group(2), m.group(3)
    modules.setdefault(target, {}).setdefault(layer, {})[_SUFFIX.get(suffix, suffix)] = key
  for target, layers in modules.items():
    for layer, parts in layers.items():
      if not {"lora_A.weight", "lora_B.weight"} <= set(parts):
        raise ValueError(f"{file.path}: blocks.{layer}.{target} lacks lora_A or lora_B")
  return modules


def _alpha(file: SafetensorsFile, parts: dict[str, str]) -> float:
  """The stored alpha; without one, alpha = rank (scale 1), as ComfyUI and diffusers read it."""
  if "alpha" in parts:
    return float(file.read(parts["alpha"]).astype(np.float64).item())
  return float(file.shape(parts["lora_A.weight"])[0])


def read_lora_config(path: str | os.PathLike) -> dict[str, object]:
  """{"targets", "rank", "alpha", "num_layers"} of a LoRA file: what `add_lora` needs before
  `load_lora`. An error when targets differ in rank or alpha."""
  file = SafetensorsFile(path)
  modules = _read_modules(file)
  if not modules:
    raise ValueError(f"{path} holds no LoRA tensors")
  ranks = {(t, i): file.shape(p["lora_A.weight"])[0] for t, ls in modules.items()
           for i, p in ls.items()}
  alphas = {(t, i): _alpha(file, p) for t, ls in modules.items() for i, p in ls.items()}
  if len(set(ranks.values())) > 1 or len(set(alphas.values())) > 1:
    raise ValueError(f"{path}: LoRA ranks {sorted(set(ranks.values()))} and alphas "
                     f"{sorted(set(alphas.values()))} differ between modules")
  return {"targets": tuple(t for t in DEFAULT_TARGETS if t in modules),
          "rank": next(iter(ranks.values())), "alpha": next(iter(alphas.values())),
          "num_layers": 1 + max(max(ls) for ls in modules.values())}


def load_lora(model: WanTransformer, path: str | os.PathLike) -> None:
  """Reads a LoRA file into a model whose adapters have the same targets, rank and alpha.

  Everything is checked before anything is written, so a mismatch leaves the model as it was.
  """
  settings = lora_settings(model)
  if not settings:
    raise ValueError(f"the model has no LoRA adapters; call add_lora with the file's settings "
                     f"first: {read_lora_config(path)}")
  file = SafetensorsFile(path)
  modules = _read_modules(file)
  missing, unexpected = sorted(set(settings) - set(modules)), sorted(set(modules) - set(settings))
  if missing or unexpected:
    raise ValueError(f"{path}: LoRA targets differ from the model's {list(settings)}: "
                     f"missing {missing}, unexpected {unexpected}")
  num_layers = model.config.num_layers
  loaded = []
  for target, (rank, alpha) in settings.items():
    layers = modules[target]
    if sorted(layers) != list(range(num_layers)):
      raise ValueError(f"{path}: {target} has layers {sorted(layers)}, the model has "
                       f"{num_layers}")
    linear = block_linear(model, target)
    a = np.stack([file.read(layers[i]["lora_A.weight"]).T for i in range(num_layers)])
    b = np.stack([file.read(layers[i]["lora_B.weight"]).T for i in range(num_layers)])
    if a.shape != linear.lora_a.shape or b.shape != linear.lora_b.shape:
      raise ValueError(f"{path}: {target} has A {a.shape[1:]} and B {b.shape[1:]} per layer "
                       f"(rank {a.shape[-1]}); the model's are {linear.lora_a.shape[1:]} and "
                       f"{linear.lora_b.shape[1:]} (rank {rank})")
    file_alphas = {_alpha(file, layers[i]) for i in range(num_layers)}
    if any(not math.isclose(fa, alpha, rel_tol=1e-6) for fa in file_alphas):
      raise ValueError(f"{path}: {target} has alpha {sorted(file_alphas)}, the model's adapter "
                       f"has {alpha}")
    loaded.append((linear, a, b))
  for linear, a, b in loaded:
    for var, value in ((linear.lora_a, a), (linear.lora_b, b)):
      var.value = jax.device_put(value.astype(var.value.dtype), var.value.sharding)


def _flat(state: nnx.State) -> dict[str, jax.Array]:
  leaves = jax.tree_util.tree_flatten_with_path(state.to_pure_dict())[0]
  return {".".join(str(getattr(k, "key", k)) for k in path): v for path, v in leaves}


def _original_tensor(model: WanTransformer, params: dict[str, jax.Array], name: str,
                     layer: int | None, kind: str, dtype: np.dtype) -> np.ndarray:
  """One tensor in the original layout: a linear's kernel with its LoRA merged, transposed to
  [out, in]; the patch embedding back to a conv weight [O, I, kt, kh, kw]."""
  if name.endswith(".kernel"):
    linear = functools.reduce(getattr, name.split(".")[:-1], model)
    array = np.asarray(merged_kernel(linear, layer))
  else:
    array = np.asarray(params[name] if layer is None else params[name][layer])
  if kind == "linear":
    array = array.T
  elif kind == "conv":  # ours [(kt, kh, kw, I), O], the patch flatten order
    cfg = model.config
    array = array.reshape(*cfg.patch_size, cfg.in_channels, -1).transpose(4, 3, 0, 1, 2)
  return array.astype(dtype)


def save_full(model: WanTransformer, path: str | os.PathLike, dtype: str = "bfloat16", *,
              prefix: str = "", metadata: dict[str, str] | None = None) -> Path:
  """The whole expert in the original Wan key layout (LoRA merged in), one safetensors file.

  prefix "" is Wan's own layout; "model.diffusion_model." is a ComfyUI checkpoint's.
  """
  if prefix not in FULL_PREFIXES:
    raise ValueError(f"prefix must be one of {FULL_PREFIXES}, got {prefix!r}")
  cfg, np_dtype = model.config, numpy_dtype(dtype)
  params = _flat(nnx.state(model, FROZEN))
  mapping = parameter_map(cfg.num_layers)
  per_layer = {re.sub(r"^blocks\.\d+\.", "blocks.", k) for k in mapping}
  if per_layer != set(params):
    raise ValueError(f"model parameters do not match the Wan layout: "
                     f"{sorted(per_layer ^ set(params))[:10]}")
  entries = []
  for ours, (original, kind) in mapping.items():
    m = re.match(r"^blocks\.(\d+)\.(.+)$", ours)
    layer, name = (int(m.group(1)), f"blocks.{m.group(2)}") if m else (None, ours)
    shape = params[name].shape[1:] if m else params[name].shape
    if kind == "linear":
      shape = shape[::-1]
    elif kind == "conv":
      shape = (shape[1], cfg.in_channels, *cfg.patch_size)
    entries.append(_Entry(prefix + original, tuple(shape), np_dtype, functools.partial(
        _original_tensor, model, params, name, layer, kind, np_dtype)))
  ours = {"format": "pt", "wan_jax_config": json.dumps(cfg.arch_dict())}
  return _write_atomic(Path(path), entries, _metadata(ours, metadata))

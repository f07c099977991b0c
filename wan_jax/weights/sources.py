"""Finding the transformer experts in what a user downloaded, and reading them as our tensors.

Accepted, detected from the files (never asked for):
- an official Wan 2.2 A14B release folder: `high_noise_model/`, `low_noise_model/`;
- an official TI2V-5B release folder: its one transformer's shards, index and config.json (with
  `model_type`) at the root, beside the VAE and text encoder: one expert, "transformer";
- a diffusers release folder: `transformer/` (high-noise), `transformer_2/` (low-noise); a
  `transformer/` alone (TI2V-5B, Wan 2.1) is one expert, "transformer";
- one expert folder: sharded safetensors with `*.index.json`, or a single file inside;
- one .safetensors file (original keys, diffusers keys, or ComfyUI's `model.diffusion_model.*`).
Each expert's task (text-to-video, image-to-video, TI2V-5B) is read off its patch embedding and
head and checked against its config.json; a release whose two experts serve different tasks is
refused.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from flax import nnx

from wan_jax.model.config import WanConfig
from wan_jax.model.quantize import quantize_numpy
from wan_jax.model.transformer import WanTransformer
from wan_jax.weights import transformer_keys as tk
from wan_jax.weights.fp8 import scale_name, stored_scales
from wan_jax.weights.safetensors_reader import CheckpointError, TensorStore, read_json
from wan_jax.weights.checkpoint_tasks import check_declared, common_task, model_of_config
from wan_jax.weights.tensor_files import PthStore, open_tensors

log = logging.getLogger(__name__)
CONVERT_THREADS = max(1, min(4, os.cpu_count() or 1))
KEPT = "kept"  # a file's fp8 kernel kept as stored

# Folder names of each release layout -> our expert names.
RELEASE_LAYOUTS = {
    "official": {"high_noise_model": "high_noise", "low_noise_model": "low_noise"},
    "diffusers": {"transformer": "high_noise", "transformer_2": "low_noise"},
}


@dataclasses.dataclass
class ExpertSource:
  """One expert's tensors with the key layout resolved; reads one tensor at a time."""

  store: TensorStore | PthStore
  prefix: str
  key_layout: str  # "original" | "diffusers"
  config: WanConfig
  task: str  # "t2v" | "i2v" | "ti2v", from the channels (and config.json, which must agree)
  scales: dict[str, str] = dataclasses.field(default_factory=dict)  # fp8 weight -> its scale key
  official: bool = False  # an official release's config.json (it declares `model_type`)

  @property
  def model(self) -> str | None:
    """"t2v_a14b" | "i2v_a14b" | "ti2v_5b", or None for other sizes (checkpoint_tasks)."""
    return model_of_config(self.config)

  @property
  def description(self) -> str:
    kind = "ComfyUI" if self.prefix else self.key_layout
    return f"{self.store.description} ({kind} keys)"

  def source_key(self, original: str) -> str:
    key = tk.to_diffusers_key(original) if self.key_layout == "diffusers" else original
    return self.prefix + key

  def converted(self, dtype: np.dtype, workers: int = CONVERT_THREADS,
                fp8: frozenset[str] = frozenset()) -> Iterator[tuple[str, np.ndarray]]:
    """(our per-layer name, tensor in `dtype`) for every parameter, in order, shapes checked;
    the kernels named in `fp8` as fp8 values plus their `kernel_scale` (weights/fp8.py): a
    ComfyUI fp8 file's own values where its scales allow, else quantised as read.

    `workers` threads convert ahead (numpy's copies release the GIL); at most 2 * workers + 1
    tensors are in memory at once.
    """
    expected = expected_shapes(self.config)
    kept, requantised = 0, collections.Counter()
    with ThreadPoolExecutor(workers) as pool:
      window: collections.deque = collections.deque()

      def done() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal kept
        pairs, note = window.popleft().result()
        if note == KEPT:
          kept += 1
        elif note:
          requantised[note] += 1
        yield from pairs

      for ours, (original, kind) in tk.parameter_map(self.config.num_layers).items():
        window.append(pool.submit(self._convert, ours, original, kind, dtype, expected,
                                  ours in fp8))
        if len(window) > 2 * workers:
          yield from done()
      while window:
        yield from done()
    if kept or requantised:  # once per expert: what became of the file's own fp8 values
      log.info("%s: kept the file's fp8 values of %d kernels (per-tensor or per-channel "
               "scales)%s", self.store.description, kept,
               "".join(f"; requantised {n} from their dequantised weights ({why})"
                       for why, n in requantised.items()))

  def _convert(self, ours: str, original: str, kind: str, dtype: np.dtype,
               expected: dict[str, tuple[int, ...]], quantized: bool = False
               ) -> tuple[list[tuple[str, np.ndarray]], str | None]:
    """([(name, tensor)], note): note is KEPT, why a file's fp8 kernel was quantised again,
    or None."""
    key = self.source_key(original)
    raw = self.store.read(key)
    scale = self.store.read(self.scales[original]) if original in self.scales else None
    in_fp8 = scale is not None or raw.dtype.name.startswith("float8")
    stored = stored_scales(raw, scale) if quantized and in_fp8 else None
    if isinstance(stored, np.ndarray):  # the file's fp8 values as they are (transposed: exact)
      values = tk.transform_for(kind)(raw)
      self._check_shape(ours, key, values.shape, expected)
      return [(ours, values), (scale_name(ours), stored)], KEPT
    if scale is not None:  # ComfyUI "fp8 scaled": weight = fp8 value * scale_weight
      raw = raw.astype(np.float32) * scale.astype(np.float32)
    # Cast first: transposing the (often smaller) target dtype is the cheaper copy.
    array = tk.transform_for(kind)(raw.astype(dtype, copy=False))
    self._check_shape(ours, key, array.shape, expected)
    if not quantized:
      return [(ours, array)], None
    q, s = quantize_numpy(array)
    return [(ours, q), (scale_name(ours), s)], stored

  def _check_shape(self, ours: str, key: str, shape: tuple[int, ...],
                   expected: dict[str, tuple[int, ...]]) -> None:
    if shape != expected[ours]:
      raise CheckpointError(f"{self.store.description}: tensor {key!r} has shape "
                            f"{self.store.shape(key)}, which gives {shape} but the model "
                            f"needs {expected[ours]} for {ours}")


def expected_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
  """Our per-layer parameter name -> shape, read off an abstract model (nothing allocated)."""
  abstract = nnx.eval_shape(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)))
  shapes: dict[str, tuple[int, ...]] = {}
  for path, leaf in nnx.to_flat_state(nnx.state(abstract)):
    name = ".".join(str(p) for p in path)
    shape = tuple(leaf.value.shape) if hasattr(leaf, "value") else tuple(leaf.shape)
    if path[0] == "blocks":
      for i in range(cfg.num_layers):
        shapes[f"blocks.{i}.{name[len('blocks.'):]}"] = shape[1:]
    else:
      shapes[name] = shape
  return shapes


def _config_json(path: Path) -> dict[str, object]:
  """An expert folder's config.json (official or diffusers), or {} for a file or no config."""
  config = path / "config.json"
  return read_json(config) if path.is_dir() and config.is_file() else {}


def _config_json_fields(raw: dict[str, object]) -> dict[str, object]:
  """num_heads, text_len and eps from an expert's config.json."""
  fields = {"num_heads": raw.get("num_heads") or raw.get("num_attention_heads"),
            "text_len": raw.get("text_len"), "eps": raw.get("eps")}
  return {k: v for k, v in fields.items() if v is not None}


def open_expert(path: Path, num_heads: int | None = None) -> ExpertSource:
  """One expert from a file or a folder of shards."""
  store = open_tensors(path)
  keys = store.keys()
  prefix, layout = tk.detect_key_layout(keys)
  by_original = _original_names(keys, prefix, layout)
  scales = _fp8_scales(by_original)
  declared = _config_json(path)
  fields = _config_json_fields(declared)
  if num_heads:
    fields["num_heads"] = num_heads

  def shape_of(original: str) -> tuple[int, ...]:
    if original not in by_original:
      raise CheckpointError(f"{store.description}: missing tensor {original!r}")
    return store.shape(by_original[original])

  cfg = tk.infer_config(shape_of, list(by_original), **fields)
  tk.check_keys(cfg, set(by_original))
  task = check_declared(declared, cfg, store.description)
  return ExpertSource(store, prefix, layout, cfg, task, scales, official="model_type" in declared)


FP8_AUX_SUFFIXES = (".scale_weight", ".scale_input")


def _fp8_scales(by_original: dict[str, str]) -> dict[str, str]:
  """Takes ComfyUI's fp8-scaled side tensors out of `by_original`; returns weight -> scale key.

  `scale_input` (activation scales for fp8 matmuls) and the `scaled_fp8` marker carry nothing
  a dequantised model, or our fp8 base (weights/fp8.py), needs.
  """
  aux = [k for k in by_original if k == "scaled_fp8" or k.endswith(FP8_AUX_SUFFIXES)]
  scales = {k[:-len(".scale_weight")] + ".weight": by_original[k]
            for k in aux if k.endswith(".scale_weight")}
  for k in aux:
    del by_original[k]
  if aux:
    log.info("fp8-scaled checkpoint: %d weights carry a scale_weight (dequantised with it, or "
             "kept in fp8 where an fp8 base can hold them)", len(scales))
  return scales


def _original_names(keys: list[str], prefix: str, layout: str) -> dict[str, str]:
  """Original Wan name -> key in the file (renaming diffusers keys back, dropping the prefix)."""
  wanted = [k for k in keys if k.startswith(prefix)]
  if len(wanted) < len(keys):  # e.g. a ComfyUI all-in-one file that also holds the VAE
    log.warning("ignoring %d tensors outside %r (not transformer weights), e.g. %s",
                len(keys) - len(wanted), prefix, next(k for k in keys if not k.startswith(prefix)))
  if layout == "original":
    return {k[len(prefix):]: k for k in wanted}
  # Rename back through the forward map of a model as deep as the file; keys we do not know keep
  # their own name so they appear in the "unexpected" list.
  layer_ids = {int(m.group(1)) for k in wanted if (m := tk.LAYER_RE.match(k[len(prefix):]))}
  reverse = {prefix + tk.to_diffusers_key(original): original
             for original, _ in tk.parameter_map(max(layer_ids, default=-1) + 1).values()}
  return {reverse.get(k, k[len(prefix):]): k for k in wanted}


def find_experts(src: str | Path, num_heads: int | None = None) -> tuple[str, dict[str, ExpertSource]]:
  """(layout name, {expert name: source}) for whatever the user pointed at."""
  src = Path(src)
  if not src.exists():
    raise CheckpointError(f"{src} does not exist")
  if src.is_file():
    expert = open_expert(src, num_heads)
    return ("comfyui" if expert.prefix else "single_file"), {"transformer": expert}
  for layout, folders in RELEASE_LAYOUTS.items():
    present = {name: src / folder for folder, name in folders.items() if (src / folder).is_dir()}
    if present:
      if layout == "diffusers" and list(present) == ["high_noise"]:
        present = {"transformer": src / "transformer"}  # Wan 2.1 style: one transformer.
      experts = {name: open_expert(p, num_heads) for name, p in present.items()}
      common_task(str(src), {name: e.task for name, e in experts.items()})
      return layout, experts
  if any(src.glob("*.safetensors")):
    expert = open_expert(src, num_heads)  # TI2V-5B's official release keeps its shards here
    return ("official" if expert.official else "expert_folder"), {"transformer": expert}
  raise CheckpointError(
      f"{src}: unknown checkpoint layout; expected high_noise_model/ + low_noise_model/ "
      "(official), transformer/ + transformer_2/ (diffusers), a folder of .safetensors shards, "
      f"or a .safetensors file. Found: {sorted(p.name for p in src.iterdir())[:20]}")

"""`load_transformer` / `load_dual_transformer`: a ready model from a converted JAX checkpoint or
straight from a PyTorch checkpoint (converted on the fly, nothing written). The architecture
(16 input channels for text-to-video, 36 for image-to-video, 48 in and out for TI2V-5B) comes
from the weights; `task_of` and `model_of` say which task a folder serves and which released
model it holds before anything loads."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from wan_jax.model.config import WanConfig
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.quantize import is_fp8, quantize
from wan_jax.model.transformer import WanTransformer
from wan_jax.weights import checkpoint
from wan_jax.weights.assemble import Tensors
from wan_jax.weights.assemble import assemble as fill_model
from wan_jax.weights.convert import dtype_name, numpy_dtype
from wan_jax.weights.fp8 import fp8_kernels, quantize_tensors, scale_name
from wan_jax.weights.safetensors_reader import CheckpointError
from wan_jax.weights.sources import ExpertSource, find_experts
from wan_jax.weights.checkpoint_tasks import (BOUNDARIES, TASK_NAMES, common_task,
                                              model_of_entry, task_of_entry)

log = logging.getLogger(__name__)


def assemble(cfg: WanConfig, tensors: Tensors) -> WanTransformer:
  """Builds the model around per-layer tensors (a dict, consumed to free host memory, or pairs
  read block by block); with `cfg.quantize` the fp8 kernels must come with their scales
  (weights/fp8.py quantises them as they are read)."""
  return fill_model(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)), tensors, stacked="blocks",
                    num_layers=cfg.num_layers)


@jax.jit
def _quantize_stack(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jax.lax.map(quantize, kernel)  # one layer at a time: fp32 temporaries of one layer


def quantize_model(model: WanTransformer, cfg: WanConfig) -> WanTransformer:
  """`model` (unquantised) as the model `cfg` describes (`cfg.quantize`): every kernel the
  quantised model stores in fp8 is quantised here, layer by layer; the rest is shared. Loading
  quantises as it reads instead (weights/fp8.py, the same values); this is the reference for
  that, and quantises models built in memory (benchmarks)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0))))
  source = {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(nnx.state(model).to_pure_dict())[0]}
  done: dict[str, tuple[jax.Array, jax.Array]] = {}

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    kernel = name.replace("'kernel_scale'", "'kernel'")
    if kernel != name or is_fp8(leaf):
      if kernel not in done:
        done[kernel] = _quantize_stack(source.pop(kernel))
      return done[kernel][1 if kernel != name else 0]
    return source.pop(name)

  pure = jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


@dataclasses.dataclass
class _Opened:
  """A path looked at once: a converted folder's manifest, or the PyTorch experts it holds."""

  path: Path
  manifest: dict[str, Any] | None
  experts: dict[str, ExpertSource] | None

  @classmethod
  def of(cls, path: str | Path, num_heads: int | None) -> _Opened:
    path = Path(path).expanduser().resolve()
    manifest = checkpoint.read_manifest(path) if path.is_dir() else None
    if manifest is not None:
      return cls(path, manifest, None)
    return cls(path, None, find_experts(path, num_heads=num_heads)[1])

  def names(self) -> list[str]:
    names = list(self.manifest.get("experts", {}) if self.manifest else self.experts)
    if not names:
      held = [k for k, v in self.manifest.items() if isinstance(v, dict)]
      raise CheckpointError(f"{self.path} holds no transformer (it holds {', '.join(held)})")
    return names

  def tensors(self, name: str, cfg: WanConfig) -> Iterator[tuple[str, np.ndarray]]:
    """One expert's per-layer tensors in `cfg.param_dtype`, read block by block; with
    `cfg.quantize` the fp8 kernels and their scales: stored ones as they are, others quantised
    as they are read, so host memory never holds the whole expert unquantised."""
    np_dtype = numpy_dtype(cfg.param_dtype)
    fp8 = fp8_kernels(cfg) if cfg.quantize == "fp8" else frozenset()
    if self.manifest is None:
      source = self.experts[name]
      log.info("converting %s on the fly (%s%s)", source.description, cfg.param_dtype,
               ", fp8 kernels quantised as read" if fp8 else "")
      return source.converted(np_dtype, fp8=fp8)
    entry = self.manifest["experts"][name]
    stored, stored_quantize = entry["dtype"], entry.get("quantize", "none")
    if stored_quantize != cfg.quantize and stored_quantize != "none":
      raise CheckpointError(
          f"{self.path}: expert {name} holds an fp8 base (converted with --dtype fp8: its "
          f"weights are already rounded to fp8); load it with model.quantize=fp8, or convert "
          f"the release again with --dtype bfloat16 for model.quantize={cfg.quantize}")
    if np_dtype.itemsize > numpy_dtype(stored).itemsize:
      log.warning("%s was converted in %s; loading as %s cannot restore the lost precision",
                  self.path, stored, cfg.param_dtype)
    keep = fp8 | {scale_name(k) for k in fp8} if stored_quantize == "fp8" else frozenset()
    tensors = ((k, v if k in keep else v.astype(np_dtype, copy=False))
               for k, v in checkpoint.read_expert_blocks(self.path / entry["path"]))
    return tensors if stored_quantize == "fp8" else quantize_tensors(tensors, fp8)

  def arch(self, name: str) -> dict[str, Any]:
    """The expert's architecture fields, without reading its tensors."""
    self._check(name)
    if self.manifest is None:
      return self.experts[name].config.arch_dict()
    return self.manifest["experts"][name]["config"]

  def model(self, name: str) -> str | None:
    """"t2v_a14b" | "i2v_a14b" | "ti2v_5b" | None (another size) of one expert."""
    self._check(name)
    if self.manifest is None:
      return self.experts[name].model
    return model_of_entry(self.manifest["experts"][name])

  def task(self) -> str:
    """"t2v" | "i2v" | "ti2v" of the experts (one task: mixed releases are refused when
    opened)."""
    if self.manifest is None:
      return common_task(str(self.path), {n: e.task for n, e in self.experts.items()})
    if self.manifest.get("task"):
      return self.manifest["task"]
    entries = self.manifest.get("experts", {})
    return common_task(str(self.path), {n: task_of_entry(entries[n]) for n in self.names()})

  def _check(self, name: str) -> None:
    names = self.names()
    if name not in names:
      raise ValueError(f"{self.path} has no expert {name!r}; it holds {names}")

  def build(self, name: str | None, dtype: str, runtime: dict[str, Any]) -> WanTransformer:
    names = self.names()
    if name is None:
      if len(names) != 1:
        raise ValueError(f"{self.path} holds experts {names}; pass expert= one of them "
                         "(or use load_dual_transformer)")
      name = names[0]
    self._check(name)
    runtime = {"compute_dtype": dtype, **runtime}
    cfg = WanConfig.from_arch_dict(self.arch(name), param_dtype=dtype, **runtime)
    return assemble(cfg, self.tensors(name, cfg))


def load_transformer(path: str | Path, dtype: str = "bfloat16", *, expert: str | None = None,
                     num_heads: int | None = None, **runtime: Any) -> WanTransformer:
  """One Wan expert, ready to call.

  path: a folder made by `convert/wan22.py`, or any PyTorch checkpoint layout it accepts.
  dtype: the parameter dtype ("bfloat16", "float32", "float16"); also the compute dtype unless
    `compute_dtype` says otherwise, so "float32" gives full-precision results.
  expert: "high_noise" / "low_noise" when the path holds both.
  runtime: WanConfig runtime fields (compute_dtype, attention, attention_chunk_size, remat,
    quantize). quantize="fp8": the block kernels in fp8, quantised block by block as they are
    read (a folder converted with --dtype fp8 is read as stored, and loads only so).
  """
  return _Opened.of(path, num_heads).build(expert, dtype_name(dtype), runtime)


def expert_arch(path: str | Path, expert: str, *, num_heads: int | None = None) -> dict[str, Any]:
  """One expert's architecture (WanConfig.from_arch_dict input) from its manifest or release
  config, without reading any tensor: what planning a run needs before the weights load."""
  return _Opened.of(path, num_heads).arch(expert)


def task_of(path: str | Path, *, num_heads: int | None = None) -> str:
  """"t2v" (text-to-video), "i2v" (image-to-video) or "ti2v" (TI2V-5B): the task of the experts
  at `path`, from a converted folder's manifest, or from a release's config.json and tensor
  shapes (file headers only, no tensor read). What picks a run's model preset and expert
  boundary (BOUNDARIES; TI2V-5B has one transformer and none)."""
  return _Opened.of(path, num_heads).task()


def model_of(path: str | Path, expert: str | None = None, *,
             num_heads: int | None = None) -> str | None:
  """Which released model an expert at `path` is: "t2v_a14b", "i2v_a14b", "ti2v_5b" (the
  wan_jax.model.config.PRESETS names), or None for other sizes; headers only, as `task_of`.
  expert: needed only when the path holds several (their model is the same)."""
  opened = _Opened.of(path, num_heads)
  return opened.model(expert or opened.names()[0])


def load_dual_transformer(path: str | Path, dtype: str = "bfloat16", *,
                          boundary: float | None = None, num_heads: int | None = None,
                          **runtime: Any) -> DualWanTransformer:
  """Both A14B experts (official, diffusers or converted layout) behind the timestep switch.

  boundary: t >= boundary * 1000 runs the high-noise expert; default: the release's (0.875 for
    text-to-video, 0.9 for image-to-video).
  """
  opened, dtype = _Opened.of(path, num_heads), dtype_name(dtype)
  task = opened.task()
  if task not in BOUNDARIES:
    raise ValueError(f"{opened.path} holds {TASK_NAMES[task]}: one transformer, not two "
                     f"experts; load it with load_transformer")
  if boundary is None:
    boundary = BOUNDARIES[task]
  return DualWanTransformer(opened.build("high_noise", dtype, runtime),
                            opened.build("low_noise", dtype, runtime), boundary=boundary)

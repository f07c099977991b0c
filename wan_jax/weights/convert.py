"""PyTorch transformer checkpoints (any detected layout) -> converted JAX checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np

from wan_jax.weights import checkpoint
from wan_jax.weights.sources import find_experts

PARAM_DTYPES = ("bfloat16", "float32", "float16")


def dtype_name(dtype: Any) -> str:
  """"bfloat16" for "bfloat16", jnp.bfloat16 or np.dtype(ml_dtypes.bfloat16); checked."""
  try:
    name = np.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in PARAM_DTYPES:
    raise ValueError(f"dtype must be one of {PARAM_DTYPES}, got {dtype!r}")
  return name


def numpy_dtype(dtype: Any) -> np.dtype:
  return np.dtype(dtype_name(dtype))  # "bfloat16" resolves once ml_dtypes is imported


def convert_transformers(src: str | Path, out: str | Path, dtype: str = "bfloat16", *,
                         num_heads: int | None = None, overwrite: bool = False,
                         log: Callable[[str], None] = print) -> dict:
  """Converts every expert found in `src` into `out`; returns the manifest written.

  Memory holds about one transformer block (plus a few tensors converting ahead). On any error the experts written so far are
  removed and no manifest is written, so `out` never looks like a finished conversion.
  """
  src, out = Path(src).expanduser().resolve(), checkpoint.absolute(out)
  dtype = dtype_name(dtype)
  np_dtype = numpy_dtype(dtype)
  layout, experts = find_experts(src, num_heads=num_heads)
  log(f"{src}: {layout} layout, experts: {', '.join(experts)}")
  if checkpoint.read_manifest(out) is not None or any((out / n).exists() for n in experts):
    if not overwrite:
      raise FileExistsError(f"{out} already holds a conversion; pass --overwrite to replace it")
    (out / checkpoint.MANIFEST).unlink(missing_ok=True)
  for name in experts:
    for stale in checkpoint.unfinished(out / name):
      log(f"removing {stale} (left by a conversion that did not finish)")
    checkpoint.remove_partial(out / name)
  out.mkdir(parents=True, exist_ok=True)

  manifest = {"source": str(src), "layout": layout, "dtype": dtype, "experts": {}}
  try:
    for name, expert in experts.items():
      cfg = expert.config
      start = time.time()
      log(f"{name}: {expert.description}: {cfg.num_layers} layers, dim {cfg.dim}, "
          f"{cfg.num_heads} heads -> {out / name} ({dtype})")

      def progress(group: str, written: int, name=name):
        log(f"  {name}: saved {group} ({written / 2**30:.2f} GiB so far)")

      nbytes = checkpoint.write_expert(expert.converted(np_dtype), out / name, progress)
      log(f"{name}: {nbytes / 2**30:.2f} GiB in {time.time() - start:.1f} s")
      manifest["experts"][name] = {"path": name, "source": expert.description,
                                   "config": cfg.arch_dict()}
  except BaseException:
    for name in experts:
      checkpoint.remove_partial(out / name)
    raise
  checkpoint.write_manifest(out, manifest)
  log(f"wrote {out / checkpoint.MANIFEST}")
  return manifest


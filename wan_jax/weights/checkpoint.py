"""Converted checkpoints: one Orbax checkpoint per component plus `manifest.json`.

Each component is written block by block (layer by layer for umT5) with Orbax's partial saves (one block's tensors in memory
at a time) and finalised atomically; the manifest is written last, so a folder without one is
never taken for a finished conversion; it records each expert's task ("t2v" / "i2v") and, when
they agree, the folder's (`task`). Leaves are per layer (`blocks/7/self_attn/q/kernel`);
stacking over layers happens when a model is built.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wan_jax.weights.safetensors_reader import read_json
from wan_jax.weights.checkpoint_tasks import task_of_entry
from wan_jax.weights.transformer_keys import LAYER_RE

MANIFEST = "manifest.json"
FORMAT = "wan_jax/2"
OLD_FORMATS = ("wan_jax.transformer/1",)  # transformers only, one dtype for all experts


def _ocp():
  # Orbax's v1 API warns that it is experimental on import; the partial-save API is v1-only.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import orbax.checkpoint.experimental.v1 as ocp
  return ocp


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def absolute(path: str | os.PathLike) -> Path:
  """Orbax needs absolute paths, and globs its folders: refuse the characters a glob reads."""
  path = Path(path).expanduser().resolve()
  if any(c in str(path) for c in "[]*?"):
    raise ValueError(f"{path}: checkpoint paths cannot contain [ ] * or ? (Orbax reads them as "
                     "glob patterns); choose another folder name")
  return path


def _group_of(name: str) -> str:
  m = LAYER_RE.match(name)
  return f"block {m.group(1)}" if m else "top-level tensors"


def write_expert(params: Iterable[tuple[str, np.ndarray]], path: Path,
                 on_group_saved=None) -> int:
  """Saves (name, array) pairs group by group (the top level, then each block); returns bytes."""
  ocp = _ocp()
  path = absolute(path)
  if path.exists():
    raise FileExistsError(f"{path} already exists")
  written, group, pending = 0, None, {}

  def flush():
    nonlocal written
    if pending:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.partial.save(path, nest(pending))
      written += sum(a.nbytes for a in pending.values())
      if on_group_saved:
        on_group_saved(group, written)
      pending.clear()

  for name, array in params:
    if _group_of(name) != group:
      flush()
      group = _group_of(name)
    pending[name] = array
  flush()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ocp.partial.finalize(path)
  return written


def read_expert(path: Path) -> dict[str, np.ndarray]:
  """Every tensor of one converted expert, as host numpy arrays keyed by per-layer name."""
  ocp = _ocp()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = ocp.load_pytree(absolute(path))
  return flatten(tree)


def release_freed_memory() -> None:
  """Returns freed heap memory to the system (glibc only; elsewhere nothing).

  Orbax's reader threads allocate each group's arrays in their own malloc arenas; freed, that
  memory stayed in the process and grew with every group read (measured on two full-width
  blocks: a 1.13 GiB fp8 model peaked at 2.0 GiB of RSS without this, 1.7 with it;
  docs/training.md, "An fp8 base").
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


def read_expert_blocks(path: Path, stacked: str = "blocks") -> Iterator[tuple[str, np.ndarray]]:
  """One converted expert's tensors (per-layer names) group by group, as `write_expert` wrote
  them: the top level, then each block in order, each group read on its own (Orbax partial
  loads), so host memory holds one block at a time, not the whole expert in its stored dtype."""
  ocp = _ocp()
  path = absolute(path)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = ocp.pytree_metadata(path).metadata
  blocks = tree.get(stacked, {})
  groups = [{k: v for k, v in tree.items() if k != stacked}]
  groups += [{stacked: {i: blocks[i]}} for i in sorted(blocks, key=int)]
  context = ocp.Context()
  context.pytree.loading.partial_load = True
  for group in groups:
    if not group:
      continue
    release_freed_memory()  # the last group's buffers, freed by now
    with warnings.catch_warnings(), context:
      warnings.simplefilter("ignore")
      tensors = flatten(ocp.load_pytree(path, group))
    while tensors:
      name = next(iter(tensors))
      yield name, tensors.pop(name)
  release_freed_memory()


def unfinished(path: Path) -> list[Path]:
  """Partial-save sessions Orbax left beside `path` (a conversion that was killed)."""
  path = Path(path)
  return sorted(path.parent.glob(path.name + ".partial_save*"))


def remove_partial(path: Path) -> None:
  """Deletes an expert folder and any unfinished partial-save session next to it."""
  for p in [Path(path), *unfinished(path)]:
    shutil.rmtree(p, ignore_errors=True)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
  """Writes atomically (a temporary file renamed over the old one)."""
  tmp = Path(out) / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps({**manifest, "format": FORMAT}, indent=2) + "\n")
  os.replace(tmp, Path(out) / MANIFEST)


def remove_manifest(out: Path) -> None:
  (Path(out) / MANIFEST).unlink(missing_ok=True)


def read_manifest(out: Path) -> dict[str, Any] | None:
  """The manifest of a converted folder, or None if `out` is not one."""
  path = Path(out) / MANIFEST
  if not path.is_file():
    return None
  manifest = read_json(path)
  if manifest.get("format") in OLD_FORMATS:
    for entry in manifest.get("experts", {}).values():
      entry.setdefault("dtype", manifest.get("dtype"))
  elif manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: unsupported format {manifest.get('format')!r} (want {FORMAT})")
  return manifest


def manifest_add(manifest: dict[str, Any], key: str, entry: dict[str, Any]) -> None:
  """key: "vae", "text_encoder", "tokenizer" or "experts.<name>"."""
  if key.startswith("experts."):
    manifest.setdefault("experts", {})[key[len("experts."):]] = entry
    _set_task(manifest)
  else:
    manifest[key] = entry


def _set_task(manifest: dict[str, Any]) -> None:
  """The top-level "task": the one task ("t2v" | "i2v") of the experts; absent without one."""
  tasks = {task_of_entry(e) for e in manifest.get("experts", {}).values()}
  if len(tasks) == 1:
    manifest["task"] = tasks.pop()
  else:
    manifest.pop("task", None)


def manifest_has(manifest: dict[str, Any], folder: str) -> bool:
  return folder in manifest.get("experts", {}) or isinstance(manifest.get(folder), dict)


def manifest_drop(manifest: dict[str, Any], folder: str) -> None:
  manifest.get("experts", {}).pop(folder, None)
  if not manifest.get("experts"):
    manifest.pop("experts", None)
  _set_task(manifest)
  if isinstance(manifest.get(folder), dict):
    del manifest[folder]

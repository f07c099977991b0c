"""PyTorch checkpoints (any detected layout) -> one converted folder of Orbax checkpoints.

The folder holds a checkpoint per component (`high_noise/`, `low_noise/` or `transformer/`,
`vae/`, `text_encoder/`), a copy of the tokenizer (`tokenizer/`) and `manifest.json`, which is
written last and lists only what finished. Components can be added to an existing folder one at
a time; replacing one needs `overwrite`. The manifest records each expert's task ("t2v", "i2v"
or "ti2v") and the folder's (`task`, top level); one folder holds experts of one task. Each
expert's entry also says which released model it is (`model`: "t2v_a14b", "i2v_a14b",
"ti2v_5b", or null for other sizes), read off its architecture.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from flax import nnx

from wan_jax.model.vae import WanVAE
from wan_jax.weights import checkpoint, umt5_keys, vae_keys
from wan_jax.weights.assemble import check_tensors, expected_shapes
from wan_jax.weights.components import Components, config_json, find_components
from wan_jax.weights.fp8 import fp8_kernels
from wan_jax.weights.safetensors_reader import CheckpointError
from wan_jax.weights.sources import find_experts
from wan_jax.weights.checkpoint_tasks import TASK_NAMES, common_task, task_of_entry
from wan_jax.weights.tensor_files import open_tensors

PARAM_DTYPES = ("bfloat16", "float32", "float16")
FP8 = "fp8"  # experts only: block kernels in float8_e4m3fn + fp32 scales, the rest bfloat16
EXPERT_DTYPES = (*PARAM_DTYPES, FP8)
COMPONENTS = ("transformers", "vae", "text_encoder", "tokenizer")


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


def vae_source(path: Path, dtype: str):
  """(config, converted tensors) of a VAE file or folder, either key layout."""
  store = open_tensors(path)
  names = vae_keys.diffusers_names(store)
  shapes = vae_keys.diffusers_shapes(store, names)
  try:
    cfg = vae_keys.infer_config(shapes, config_json(path), param_dtype=dtype, compute_dtype=dtype)
  except CheckpointError as e:
    raise CheckpointError(f"{store.description}: {e}") from None
  ours = dict(vae_keys.diffusers_to_ours(k, np.empty(s, np.uint8)) for k, s in shapes.items())
  expected = expected_shapes(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  check_tensors(store.description, {k: v.shape for k, v in ours.items()}, expected)
  return store, cfg, vae_keys.converted(store, names, numpy_dtype(dtype))


def text_encoder_source(path: Path, dtype: str):
  """(config, converted tensors) of a umT5 file (Wan .pth) or folder (HF / diffusers)."""
  store = open_tensors(path)
  keys = store.keys()
  layout = umt5_keys.detect_layout(keys)
  cfg = umt5_keys.infer_config({k: tuple(store.shape(k)) for k in keys}, layout,
                               param_dtype=dtype, compute_dtype=dtype)
  return store, cfg, umt5_keys.convert(store, numpy_dtype(dtype))


def arch_of(cfg) -> dict[str, Any]:
  """A config's architecture fields (runtime choices such as dtypes left out), JSON-ready."""
  if hasattr(cfg, "arch_dict"):
    return cfg.arch_dict()
  runtime = ("param_dtype", "compute_dtype")
  return {k: v for k, v in vars(cfg).items() if k not in runtime}


class _Writer:
  """Writes components into `out`; removes everything it wrote if the run does not finish."""

  def __init__(self, out: Path, log: Callable[[str], None]):
    self.out, self.log, self.written = out, log, []

  def params(self, name: str, params: Iterable[tuple[str, np.ndarray]]) -> int:
    path = self.out / name
    for stale in checkpoint.unfinished(path):
      self.log(f"removing {stale} (left by a conversion that did not finish)")
    checkpoint.remove_partial(path)
    self.written.append(path)
    start = time.time()

    def progress(group: str, written: int):
      self.log(f"  {name}: saved {group} ({written / 2**30:.2f} GiB so far)")

    nbytes = checkpoint.write_expert(params, path, progress)
    self.log(f"{name}: {nbytes / 2**30:.2f} GiB in {time.time() - start:.1f} s")
    return nbytes

  def tokenizer(self, src: Path) -> None:
    from transformers import AutoTokenizer
    try:
      AutoTokenizer.from_pretrained(str(src))
    except Exception as e:  # any failure means the folder is unusable
      raise CheckpointError(f"{src}: the tokenizer does not load ({type(e).__name__}: {e})") from e
    dest = self.out / "tokenizer"
    shutil.rmtree(dest, ignore_errors=True)
    self.written.append(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.pth", "*.bin"))
    self.log(f"tokenizer: copied {src} -> {dest}")

  def undo(self) -> None:
    for path in self.written:
      checkpoint.remove_partial(path)


def convert_checkpoint(src: str | Path, out: str | Path, dtype: str = "bfloat16", *,
                       vae_dtype: str = "float32", text_encoder_dtype: str = "bfloat16",
                       only: Iterable[str] | None = None, num_heads: int | None = None,
                       overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
  """Converts every component found in `src` (or those in `only`) into `out`; returns the manifest.

  dtype: the transformers' parameter dtype, or "fp8": the block kernels quantised as
  `model.quantize=fp8` stores them (fp8 values and scales, the same numbers as quantising a
  bfloat16 conversion on load: a ComfyUI fp8 file's own values where its scales allow), the rest
  in bfloat16; half the disk and load time, and it loads only with model.quantize=fp8. The VAE
  stays float32 and umT5 bfloat16 (as released) unless told otherwise; fp8 is not for them.
  Memory holds about one transformer block or one umT5 layer at a time.
  """
  src, out = Path(src).expanduser().resolve(), checkpoint.absolute(out)
  for flag, value in (("--vae-dtype", vae_dtype), ("--text-encoder-dtype", text_encoder_dtype)):
    if str(value) == FP8:
      raise ValueError(f"{flag} fp8: fp8 is for the transformer experts only (--dtype fp8); "
                       f"{flag} takes {', '.join(PARAM_DTYPES)}")
  quantize = FP8 if str(dtype) == FP8 else "none"
  dtypes = {"transformers": "bfloat16" if quantize == FP8 else dtype_name(dtype),
            "vae": dtype_name(vae_dtype), "text_encoder": dtype_name(text_encoder_dtype)}
  try:
    components = find_components(src)
  except CheckpointError as e:  # every refusal names what the user pointed at
    if str(src) in str(e):
      raise
    raise CheckpointError(f"{src}: {e}") from None
  found = components.found()
  selected = list(only) if only else found
  unknown = sorted(set(selected) - set(COMPONENTS))
  if unknown:
    raise ValueError(f"unknown components {unknown}; choose from {list(COMPONENTS)}")
  missing = [c for c in selected if c not in found]
  if missing:
    raise CheckpointError(f"{src} has no {', '.join(missing)} (found: {', '.join(found)})")
  log(f"{src}: found {', '.join(found)}; converting {', '.join(selected)} -> {out}")

  manifest = checkpoint.read_manifest(out) or {}
  # The experts are found (shard headers read, configs inferred) once, before anything is written.
  experts = (find_experts(components.transformers, num_heads=num_heads)
             if "transformers" in selected else None)
  planned = {name: list(experts[1]) if name == "transformers" else [name] for name in selected}
  _refuse_overlap(out, planned, components)
  if experts is not None:
    _refuse_other_task(out, manifest, experts[1], src)
  clashes = [f for folders in planned.values() for f in folders
             if checkpoint.manifest_has(manifest, f) or (out / f).exists()]
  if clashes and not overwrite:
    raise FileExistsError(f"{out} already holds {', '.join(clashes)}; pass --overwrite to "
                          "replace them")
  for folder in clashes:  # the manifest forgets them before their files go
    checkpoint.manifest_drop(manifest, folder)
  checkpoint.write_manifest(out, manifest) if manifest else checkpoint.remove_manifest(out)
  out.mkdir(parents=True, exist_ok=True)

  # One component at a time: each finished one enters the manifest at once, so a failure or
  # Ctrl-C later loses only the component in progress (whose files are removed).
  for name in selected:
    writer = _Writer(out, log)
    try:
      entries = list(_convert_one(name, components, dtypes, experts, writer, log, quantize))
    except BaseException:
      writer.undo()
      raise
    for key, entry in entries:
      checkpoint.manifest_add(manifest, key, entry)
    checkpoint.write_manifest(out, manifest)
    log(f"{name}: done; {out / checkpoint.MANIFEST} updated")
  return manifest


def _refuse_overlap(out: Path, planned: dict[str, list[str]], components: Components) -> None:
  """Replacing a folder that is (or holds) a source would delete the source while reading it."""
  sources = [Path(getattr(components, n)).resolve() for n in COMPONENTS
             if getattr(components, n) is not None]
  for folders in planned.values():
    for folder in folders:
      dest = (out / folder).resolve()
      for src in sources:
        if dest == src or dest in src.parents:
          raise ValueError(f"{dest} would overwrite the source {src}; choose another output "
                           "folder")


def _refuse_other_task(out: Path, manifest: dict, experts: dict, src: Path) -> None:
  """Experts added to a folder must serve the task of the experts it keeps (a folder's experts
  are loaded together, and the trainer picks its preset and boundary from the folder's task)."""
  new = common_task(str(src), {name: e.task for name, e in experts.items()})
  kept = {name: task_of_entry(entry) for name, entry in manifest.get("experts", {}).items()
          if name not in experts}
  other = {name: task for name, task in kept.items() if task != new}
  if other:
    raise CheckpointError(
        f"{out} holds {', '.join(other)} for {TASK_NAMES[next(iter(other.values()))]} but {src} "
        f"is {TASK_NAMES[new]}; convert it into another folder")


def _convert_one(name: str, components: Components, dtypes: dict[str, str],
                 experts: tuple[str, dict] | None, writer: _Writer,
                 log, quantize: str = "none") -> Iterator[tuple[str, dict]]:
  """Converts one component; yields its manifest entries (one per expert for transformers).
  quantize="fp8": the experts' fp8 kernels written quantised; the entry says so ("quantize"),
  which is how loading knows (absent: "none")."""
  path = getattr(components, name)
  if name == "tokenizer":
    writer.tokenizer(path)
    yield "tokenizer", {"path": "tokenizer", "source": str(path)}
    return
  dtype = dtypes[name]
  if name == "transformers":
    layout, sources = experts
    task = common_task(str(path), {n: e.task for n, e in sources.items()})
    log(f"transformers: {layout} layout, {TASK_NAMES[task]}, experts: {', '.join(sources)}")
    for expert_name, expert in sources.items():
      cfg = expert.config
      fp8 = fp8_kernels(cfg) if quantize == FP8 else frozenset()
      log(f"{expert_name}: {expert.description}: {cfg.num_layers} layers, dim {cfg.dim}, "
          f"{cfg.num_heads} heads ({dtype}{', block kernels in fp8' if fp8 else ''})")
      writer.params(expert_name, expert.converted(np.dtype(numpy_dtype(dtype)), fp8=fp8))
      entry = {"path": expert_name, "source": expert.description, "layout": layout,
               "task": expert.task, "model": expert.model, "dtype": dtype,
               "config": cfg.arch_dict()}
      yield f"experts.{expert_name}", entry | ({"quantize": quantize} if fp8 else {})
    return
  source = vae_source if name == "vae" else text_encoder_source
  store, cfg, params = source(path, dtype)
  log(f"{name}: {store.description} ({dtype})")
  writer.params(name, params)
  yield name, {"path": name, "source": str(path), "dtype": dtype, "config": arch_of(cfg)}

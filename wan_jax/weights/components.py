"""What a user downloaded, sorted into components: experts, VAE, text encoder, tokenizer.

Accepted, detected from the files:
- an official Wan 2.2 A14B release: `high_noise_model/`, `low_noise_model/`, `Wan2.1_VAE.pth`,
  `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/` (tokenizer);
- the official TI2V-5B release: the transformer's shards, index and config.json at the root,
  beside `Wan2.2_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` and `google/umt5-xxl/`;
- a diffusers release: `transformer/`, `transformer_2/` (A14B only), `vae/`, `text_encoder/`,
  `tokenizer/`;
- any one of those components on its own: a file (.safetensors, or a torch.save .pth/.pt/.bin
  read without running pickle code) or a folder of safetensors shards; its kind is read off its
  tensor names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from wan_jax.weights import transformer_keys, umt5_keys, vae_keys
from wan_jax.weights.layouts import Layout
from wan_jax.weights.safetensors_reader import CheckpointError, read_json
from wan_jax.weights.sources import RELEASE_LAYOUTS
from wan_jax.weights.tensor_files import PTH_SUFFIXES, open_tensors

log = logging.getLogger(__name__)

# Wan2.2_VAE.pth: TI2V-5B's 48-channel VAE (wan_jax.weights.vae_keys reads either).
VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors", "Wan2.2_VAE.pth")
TEXT_ENCODER_FILES = ("models_t5_umt5-xxl-enc-bf16.pth",)
TOKENIZER_FOLDERS = ("google/umt5-xxl", "tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
# Each key module's `layout_of`, asked in turn: the VAE's and umT5's names are specific, a
# transformer is what is left. A new component is one key module and one entry here.
DETECTORS: tuple[Callable[[Iterable[str]], Layout | None], ...] = (
    vae_keys.layout_of, umt5_keys.layout_of, transformer_keys.layout_of)


def detect(keys: Iterable[str]) -> Layout:
  """The layout of a checkpoint's keys; CheckpointError naming a few keys when none matches."""
  keys = list(keys)
  for layout_of in DETECTORS:
    layout = layout_of(keys)
    if layout is not None:
      return layout
  raise CheckpointError("neither a Wan transformer, a Wan VAE nor a umT5 text encoder; "
                        f"first keys: {sorted(keys)[:8]}")


def kind_of(keys: list[str]) -> str:
  """"transformer", "vae" or "text_encoder", from tensor names alone (layouts.detect)."""
  return detect(keys).component


@dataclasses.dataclass
class Components:
  """Where each component lives (None: not in what the user pointed at)."""

  transformers: Path | None = None  # what `sources.find_experts` reads
  vae: Path | None = None
  text_encoder: Path | None = None
  tokenizer: Path | None = None

  def found(self) -> list[str]:
    return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


def _is_tokenizer_folder(path: Path) -> bool:
  return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


def _has_weights(path: Path) -> bool:
  return any(path.glob("*.safetensors")) or any(p.suffix in PTH_SUFFIXES for p in path.iterdir())


def find_components(src: str | Path) -> Components:
  """Sorts `src` (a release folder, a component folder or a single file) into components."""
  src = Path(src).expanduser().resolve()
  if not src.exists():
    raise CheckpointError(f"{src} does not exist")
  is_release = src.is_dir() and any((src / d).is_dir() for ds in RELEASE_LAYOUTS.values()
                                    for d in ds)
  if src.is_file() or (not is_release and any(src.glob("*.safetensors"))):
    kind = kind_of(open_tensors(src).keys())
    found = Components(**{"transformers" if kind == "transformer" else kind: src})
    if kind == "text_encoder" and src.is_dir() and _is_tokenizer_folder(src):
      found.tokenizer = src
    if kind == "transformer" and src.is_dir():  # TI2V-5B: the rest of the release beside it
      _find_beside(found, src, folders=False)
    return found
  if _is_tokenizer_folder(src) and not _has_weights(src):
    return Components(tokenizer=src)
  found = Components(transformers=src if is_release else None)
  _find_beside(found, src, folders=True)
  if not found.found():
    raise CheckpointError(
        f"{src}: found no Wan 2.2 component. Expected a release folder (official: "
        "high_noise_model/, low_noise_model/, Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, "
        "google/umt5-xxl/; diffusers: transformer/, transformer_2/, vae/, text_encoder/, "
        "tokenizer/), a component folder, or a single .safetensors/.pth file. Found: "
        f"{sorted(p.name for p in src.iterdir())[:20]}")
  return found


def _find_beside(found: Components, src: Path, folders: bool) -> None:
  """The VAE, text encoder and tokenizer of a release folder, by their released names (and the
  diffusers subfolders `vae/`, `text_encoder/` when `folders`)."""
  vae = [*(src / f for f in VAE_FILES), *([src / "vae"] if folders else [])]
  text = [*(src / f for f in TEXT_ENCODER_FILES), *([src / "text_encoder"] if folders else [])]
  found.vae = next((p for p in vae if p.exists()), None)
  found.text_encoder = next((p for p in text if p.exists()), None)
  found.tokenizer = next((src / d for d in TOKENIZER_FOLDERS if _is_tokenizer_folder(src / d)),
                         None)


def config_json(path: Path) -> dict:
  """A component folder's config.json (diffusers/HF), or {} for files and folders without one."""
  return read_json(path / "config.json") if path.is_dir() and (path / "config.json").is_file() else {}

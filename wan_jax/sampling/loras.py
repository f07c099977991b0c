"""Which LoRA file goes on which expert, and putting it there.

A file names its expert in the metadata wan-jax writes (`expert`: "high_noise" | "low_noise", and
`modelspec.architecture`, e.g. "wan-2.2-t2v-a14b-high-noise/lora"); files from elsewhere are
routed by "high_noise" / "low_noise" in their name, else the caller must say which expert
(--lora-high / --lora-low). The adapters are added with the file's own rank, alpha and targets
(`read_lora_config`), then loaded (`load_lora`), which refuses a file whose shapes do not fit the
expert. The adapter weights are float32 in the model whatever the file stores (bf16 by default:
docs/training.md, "Sampling", says what that changes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from wan_jax.model.lora import add_lora
from wan_jax.model.transformer import WanTransformer
from wan_jax.train.outputs.lora_metadata import base_architecture
from wan_jax.train.step.expert_schedule import HIGH, LOW
from wan_jax.variants import TWO_EXPERTS
from wan_jax.weights.export import load_lora, read_lora_config
from wan_jax.weights.safetensors_reader import SafetensorsFile

BY_NAME = {name: expert for expert, name in TWO_EXPERTS.items()}  # "high_noise" -> HIGH


def _metadata(path: Path) -> dict[str, str]:
  return SafetensorsFile(path).metadata or {}


def expert_of(path: Path) -> str | None:
  """HIGH or LOW from the file's metadata or name; None when neither says."""
  meta = _metadata(path)
  if meta.get("expert") in BY_NAME:
    return BY_NAME[meta["expert"]]
  arch = meta.get("modelspec.architecture", "")
  for name, expert in BY_NAME.items():
    if name.replace("_", "-") in arch or name in Path(path).name:
      return expert
  return None


def assign(loras: list[Path], high: Path | None, low: Path | None,
           experts: Mapping[str, str] = TWO_EXPERTS) -> dict[str, Path]:
  """expert -> file: --lora-high / --lora-low as given, each --lora file by `expert_of` (a
  one-model release's `experts`: every file is for its one model); one expert given twice is an
  error."""
  if len(experts) == 1 and low is not None:
    raise ValueError("this model has one expert for every timestep: give its LoRA with --lora "
                     "(not --lora-low)")
  out: dict[str, Path] = {}
  pairs = [(HIGH, high), (LOW, low)] + [(None, p) for p in loras]
  for expert, path in pairs:
    if path is None:
      continue
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"LoRA file {path} does not exist")
    if expert is None:
      expert = next(iter(experts)) if len(experts) == 1 else expert_of(path)
      if expert is None:
        raise ValueError(f"{path}: cannot tell which expert it is for (no wan-jax metadata, "
                         "no high_noise/low_noise in its name); pass it as --lora-high or "
                         "--lora-low")
    if expert in out:
      raise ValueError(f"two LoRA files for the {experts[expert]} expert: "
                       f"{out[expert]} and {path}")
    out[expert] = path
  return out


def check_made_for(path: Path, arch: str) -> None:
  """A file whose metadata names another base model (the other task, or tiny vs A14B) is
  refused before anything loads."""
  made_for = _metadata(path).get("modelspec.architecture", "")
  base = base_architecture(arch)
  model = made_for.split("/")[0]
  if made_for.startswith("wan-2.2-") and not (model == base or model.startswith(base + "-")):
    raise ValueError(f"{path} is a LoRA for {made_for.split('/')[0]}, but the model is {base}")


def apply_lora(model: WanTransformer, path: Path) -> None:
  """Adds adapters with the file's settings to `model` (which must have none) and loads them."""
  settings = read_lora_config(path)
  layers = model.config.num_layers
  if settings["num_layers"] != layers:
    raise ValueError(f"{path} adapts {settings['num_layers']} blocks; the model has {layers}")
  add_lora(model, int(settings["rank"]), float(settings["alpha"]), settings["targets"])
  load_lora(model, path)

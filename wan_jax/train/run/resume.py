"""Resuming a run: what a checkpoint's state depends on, checked before anything big loads, and
the restore itself (the newest intact checkpoint, see checkpointing.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from wan_jax.data.config import dataset_config
from wan_jax.tasks.i2v_images import image_i2v_config
from wan_jax.train.run.checkpointing import Checkpoints
from wan_jax.variants import VARIANTS
from wan_jax.train.run.expert_states import Experts

# A resume with other values would silently continue a different run (another data order, LoRA
# shape or expert schedule), so it is refused.
RESUME_KEYS = ("seed", "model.arch", "model.name_or_path", "model.quantize",
               "model.train_high_noise", "model.train_low_noise", "lora", "train.batch_size",
               "train.grad_accum", "train.switch_boundary_every", "datasets", "mesh",
               "image_i2v", "ti2v")
# sections only some configs have (image-to-video's, the TI2V-5B's); None if absent
OPTIONAL_KEYS = ("image_i2v", "ti2v")
# Keys added after runs were saved, and the value those runs had.
LATER_KEYS = {"model.quantize": "none", "image_i2v": None, "ti2v": None}


def _plain(value: Any) -> Any:
  """A config value as JSON-comparable data (ConfigDicts and lists of them included)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  elif isinstance(value, (list, tuple)):
    value = [_plain(v) for v in value]
  return json.loads(json.dumps(value, default=str))


def resume_settings(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The values of RESUME_KEYS, as saved in every checkpoint's metadata."""
  out = {}
  for key in RESUME_KEYS:
    value = cfg
    for part in key.split("."):
      value = value.get(part) if key in OPTIONAL_KEYS else value[part]
    out[key] = _plain(value)
  return out


def _with_new_dataset_keys(saved: dict[str, Any]) -> dict[str, Any]:
  """Settings saved before a dataset key existed (e.g. trigger_word) compare as its default."""
  saved = {**LATER_KEYS, **saved}
  arch = saved.get("model.arch")
  if saved["image_i2v"] is None and arch in VARIANTS and VARIANTS[arch].task == "i2v":
    saved["image_i2v"] = _plain(image_i2v_config())  # saved before the section: its defaults
  if not isinstance(saved.get("datasets"), list):
    return saved
  base = _plain(dataset_config())
  return {**saved, "datasets": [{**base, **d} if isinstance(d, dict) else d
                                for d in saved["datasets"]]}


def check_resume(saved: dict[str, Any] | None, cfg: ml_collections.ConfigDict, start: int,
                 workdir: Path) -> None:
  """Refuses a checkpoint past train.steps or saved with other RESUME_KEYS values."""
  steps = int(cfg.train.steps)
  if start > steps:
    raise ValueError(f"{workdir} holds a checkpoint at step {start}, past train.steps={steps}; "
                     "raise train.steps to continue, or use another --workdir")
  if saved is None:
    return
  now = resume_settings(cfg)
  saved = _with_new_dataset_keys(saved)
  changed = sorted(k for k in RESUME_KEYS if saved.get(k) != now[k])
  if changed:
    raise ValueError(f"{workdir} was trained with other settings for {', '.join(changed)}; "
                     "resuming would not continue the same run. Use another --workdir (or "
                     "restore those settings; train.steps, learning rate, previews and saving may "
                     "change between resumes)")


def restore(ckpt: Checkpoints, experts: Experts, iterator: Any, cfg: ml_collections.ConfigDict,
            workdir: Path) -> dict[str, Any]:
  """Loads the newest intact checkpoint into `experts` and `iterator`; returns its metadata."""
  _, state, meta = ckpt.restore_newest(
      experts.abstract_tree(), iterator,
      lambda m: check_resume(m.get("settings"), cfg, int(m["step"]), workdir))
  experts.load(state, meta["expert_steps"])
  return meta

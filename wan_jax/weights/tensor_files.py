"""One interface over every tensor file a user may have: safetensors (files or shard folders) and
torch.save files, the latter read by the restricted `.pth` reader (no pickle code runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wan_jax.weights.pth_reader import PthFile
from wan_jax.weights.safetensors_reader import CheckpointError, TensorStore

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPERS = ("state_dict.", "module.")


class PthStore:
  """A .pth file behind the TensorStore interface (keys, shape, read, description).

  A state dict wrapped as {"state_dict": ...} or saved from DataParallel ("module.") is unwrapped.
  """

  def __init__(self, path: Path):
    self.file = PthFile(path)
    self.description = str(path)
    keys = self.file.keys()
    self.prefix = next((p for p in _WRAPPERS if keys and all(k.startswith(p) for k in keys)), "")
    self._keys = [k[len(self.prefix):] for k in keys]

  def keys(self) -> list[str]:
    return list(self._keys)

  def __contains__(self, key: str) -> bool:
    return self.prefix + key in self.file

  def shape(self, key: str) -> tuple[int, ...]:
    return self.file.shape(self.prefix + key)

  def read(self, key: str) -> np.ndarray:
    return self.file.read(self.prefix + key)


def open_tensors(path: str | Path) -> TensorStore | PthStore:
  """A .safetensors file, a folder of shards, or a torch.save file, as one tensor store."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path} does not exist")
  if path.is_file() and path.suffix in PTH_SUFFIXES:
    return PthStore(path)
  if path.is_file() and path.suffix != ".safetensors":
    raise CheckpointError(f"{path}: expected .safetensors or a torch.save file "
                          f"({', '.join(PTH_SUFFIXES)}), got {path.suffix or 'no suffix'}")
  return TensorStore.open(path)



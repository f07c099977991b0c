"""A streaming safetensors reader: one tensor in memory at a time, no framework needed.

The `safetensors` package's numpy backend cannot return bfloat16 or float8 tensors, which is what
ComfyUI files hold; this reader parses the header itself, checks every offset against the file
size (a truncated download is an error, not garbage), and reads one tensor per call.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
  """A checkpoint that cannot be used as it is; the message names the file and the problem."""


def read_json(path: Path) -> dict:
  """A JSON object from a checkpoint's side files, or a CheckpointError naming the file."""
  try:
    data = json.loads(Path(path).read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


class SafetensorsFile:
  """Index of one .safetensors file; `read(key)` returns a fresh numpy array."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
      (header_len,) = struct.unpack("<Q", head)
      if header_len > min(size - 8, 100 << 20):
        raise CheckpointError(f"{self.path}: not a safetensors file or truncated "
                              f"(header of {header_len} bytes in a {size}-byte file)")
      try:
        header = json.loads(f.read(header_len))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{self.path}: unreadable safetensors header ({e})") from e
    self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    self._data_start = 8 + header_len
    self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    for key, info in header.items():
      if info["dtype"] not in DTYPES:
        raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
      dtype = np.dtype(DTYPES[info["dtype"]])
      shape = tuple(info["shape"])
      begin, end = info["data_offsets"]
      if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise CheckpointError(f"{self.path}: tensor {key!r} byte range does not match its shape")
      if self._data_start + end > size:
        raise CheckpointError(f"{self.path} is truncated: tensor {key!r} ends at byte "
                              f"{self._data_start + end} but the file has {size} bytes")
      self._entries[key] = (dtype, shape, begin, end)

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][1]

  def dtype(self, key: str) -> np.dtype:
    return self._entries[key][0]

  def read(self, key: str) -> np.ndarray:
    dtype, shape, begin, end = self._entries[key]
    out = np.empty(shape, dtype)
    with open(self.path, "rb") as f:
      f.seek(self._data_start + begin)
      n = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if n != end - begin:
      raise CheckpointError(f"{self.path}: short read of tensor {key!r}")
    return out


class TensorStore:
  """All tensors of one checkpoint, across shard files: key -> (file, dtype, shape)."""

  def __init__(self, files: list[SafetensorsFile], description: str):
    self.description = description
    self._where: dict[str, SafetensorsFile] = {}
    for f in files:
      for key in f.keys():
        if key in self._where:
          raise CheckpointError(f"tensor {key!r} appears in both {self._where[key].path} "
                                f"and {f.path}")
        self._where[key] = f

  @classmethod
  def open(cls, path: str | os.PathLike) -> "TensorStore":
    """A single .safetensors file, or a folder of shards (with or without *.index.json)."""
    path = Path(path)
    if path.is_file():
      return cls([SafetensorsFile(path)], str(path))
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
      raise CheckpointError(f"{path}: several safetensors index files: {[p.name for p in indexes]}")
    if indexes:
      weight_map = read_json(indexes[0]).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{indexes[0]}: no 'weight_map' in the index")
      names = sorted(set(weight_map.values()))
      missing = [n for n in names if not (path / n).is_file()]
      if missing:
        raise CheckpointError(f"{indexes[0]} lists shard files that are missing: {missing}")
      store = cls([SafetensorsFile(path / n) for n in names], str(path))
      absent = sorted(set(weight_map) - set(store.keys()))
      if absent:
        raise CheckpointError(f"{indexes[0]} maps tensors that no shard holds: {absent[:10]}")
      return store
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
      raise CheckpointError(f"{path}: no .safetensors files")
    return cls([SafetensorsFile(p) for p in shards], str(path))

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    return self._where[key].shape(key)

  def read(self, key: str) -> np.ndarray:
    return self._where[key].read(key)

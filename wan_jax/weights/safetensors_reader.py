"""A streaming safetensors reader: one tensor in memory at a time, no framework needed.

The `safetensors` package's numpy backend cannot return bfloat16 or float8 tensors, which is what
ComfyUI files hold; this reader parses the header itself and reads one tensor per call. The
header is checked as the format specifies before any tensor is read (a damaged or crafted file
is an error naming the file and the tensor, never garbage): an 8-byte little-endian length, a
JSON object of `{name: {"dtype", "shape", "data_offsets": [begin, end]}}` plus an optional
`__metadata__` str -> str map, then the data area, which the tensors' byte ranges cover exactly,
without gaps or overlaps, each as long as its shape times its dtype's size.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu, "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library refuses larger headers too
METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used as it is; the message names the file and the problem."""


class _DuplicateKey(ValueError):
  pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
  """json object hook: the format forbids duplicate keys (json.loads would keep the last)."""
  out: dict = {}
  for key, value in pairs:
    if key in out:
      raise _DuplicateKey(key)
    out[key] = value
  return out


def read_json(path: Path) -> dict:
  """A JSON object from a checkpoint's side files, or a CheckpointError naming the file."""
  try:
    data = json.loads(Path(path).read_text())
  except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, absurd nesting or numbers
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


def _is_index(x: object) -> bool:
  return type(x) is int and x >= 0  # not bool, not float


def parse_header(path: Path, raw: bytes, data_len: int
                 ) -> tuple[dict[str, str], dict[str, tuple[np.dtype, tuple[int, ...], int, int]]]:
  """(metadata, {name: (dtype, shape, begin, end)}) from a header, checked against the format.

  `data_len` is the size of the data area after the header; offsets are relative to it.
  """
  def bad(why: str, key: str | None = None) -> CheckpointError:
    return CheckpointError(f"{path}: " + (f"tensor {key!r} " if key is not None else "") + why)

  try:
    header = json.loads(raw, object_pairs_hook=_unique_keys)
  except _DuplicateKey as e:
    raise bad(f"key {e.args[0]!r} appears twice in the header") from None
  except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, absurd nesting or numbers
    raise bad(f"unreadable safetensors header ({type(e).__name__}: {e})") from None
  if not isinstance(header, dict):
    raise bad(f"the safetensors header is a JSON {type(header).__name__}, not an object")
  metadata = header.pop(METADATA_KEY, None)
  if metadata is None:
    metadata = {}
  if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
    raise bad(f"{METADATA_KEY} must map strings to strings, got {metadata!r:.100}")

  entries = {}
  for key, info in header.items():
    if not isinstance(info, dict):
      raise bad(f"has a header entry that is a JSON {type(info).__name__}, not an object", key)
    if "dtype" not in info:
      raise bad("has no dtype", key)
    name = info["dtype"]
    if not isinstance(name, str) or name not in DTYPES:
      raise bad(f"has unknown or unsupported dtype {name!r:.50} (supported: "
                f"{', '.join(DTYPES)})", key)
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(_is_index(n) for n in shape)):
      raise bad(f"has shape {shape!r:.100}, not a list of non-negative integers", key)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int
                                                                    for x in offsets)):
      raise bad(f"has data_offsets {offsets!r:.100}, not two integers [begin, end]", key)
    begin, end = offsets
    if not 0 <= begin <= end:
      raise bad(f"has data_offsets [{begin}, {end}]; they must satisfy 0 <= begin <= end", key)
    if end > data_len:
      raise CheckpointError(f"{path} is truncated: tensor {key!r} ends at data byte {end} but "
                            f"the data area has {data_len} bytes")
    dtype = np.dtype(DTYPES[name])
    if math.prod(shape) * dtype.itemsize != end - begin:  # Python ints: no overflow
      raise bad(f"has {end - begin} bytes but shape {shape} of {name} needs "
                f"{math.prod(shape) * dtype.itemsize}", key)
    entries[key] = (dtype, tuple(shape), begin, end)

  # The byte ranges, in order, must tile the data area: no gap, no overlap, nothing left over.
  covered, previous = 0, None
  for key, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
    if begin < covered:
      raise bad(f"overlaps tensor {previous!r} (its bytes start at {begin}, before {previous!r} "
                f"ends at {covered})", key)
    if begin > covered:
      raise bad(f"starts at data byte {begin}, leaving bytes {covered}..{begin} owned by no "
                "tensor (the ranges must be contiguous)", key)
    covered, previous = end, key
  if covered != data_len:
    raise bad(f"the last {data_len - covered} of its {data_len} data bytes belong to no tensor "
              "(the tensors' ranges must cover the data exactly); a damaged file")
  return metadata, entries


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
      if header_len > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"{self.path}: not a safetensors file or truncated "
                              f"(header of {header_len} bytes in a {size}-byte file)")
      raw = f.read(header_len)
    self._data_start = 8 + header_len
    self.metadata, self._entries = parse_header(self.path, raw, size - self._data_start)

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][1]

  def dtype(self, key: str) -> np.dtype:
    return self._entries[key][0]

  def read(self, key: str) -> np.ndarray:
    dtype, shape, begin, end = self._entries[key]
    out = np.empty(shape, dtype)
    try:
      with open(self.path, "rb") as f:
        f.seek(self._data_start + begin)
        n = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    except OSError as e:  # the file changed or the disk failed since the header was read
      raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({e})") from e
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
      odd = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
      if odd is not None:
        raise CheckpointError(f"{indexes[0]}: weight_map[{odd!r}] is "
                              f"{weight_map[odd]!r:.100}, not a file name")
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

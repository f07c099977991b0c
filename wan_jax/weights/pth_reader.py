"""A restricted, streaming reader for PyTorch `.pth` files (torch.save's zip format), without torch.

Wan's VAE and umT5 encoder ship only as `.pth`. Loading those with torch runs whatever the pickle
says; here the pickle may name only the few globals a state dict uses (anything else is refused
before it is called), tensors become records of where their bytes are, and `read(key)` seeks to
one tensor's bytes in the stored (uncompressed) zip member, so memory stays at one tensor.
The pickle itself is inflated only up to MAX_PICKLE_BYTES, and every error names the file.

Nested dicts (`{"state_dict": {...}}`) are flattened with dots; `common_prefix(keys)` finds such a
wrapper, which callers strip. Non-tensor leaves (ints, strings, ...) go to `extras`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from wan_jax.weights.safetensors_reader import CheckpointError

DTYPES = {  # torch dtype name -> numpy dtype
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2, "int64": np.int64, "int32": np.int32,
    "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
# Typed storages torch names in the pickle; float8 tensors use UntypedStorage plus a dtype instead.
STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
_NP_DTYPES = {np.dtype(d) for d in DTYPES.values()}
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch < 1.6 files
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes
# The largest data.pkl we inflate. torch.save's pickle holds ~140 bytes per tensor (name, shape,
# stride, storage id), so Wan's VAE and umT5-xxl pickles are ~30-40 KB and even a 14B transformer
# saved as .pth (~1,100 tensors) ~150 KB; 4 MiB is 25x that (~30,000 tensors). The cap is also
# what bounds a crafted file: a deflated member can be 1000x its stored size (a 400 MiB "bomb"
# fits in 400 KB), and unpickling grows up to ~90x (one opcode byte makes an empty list), so
# 4 MiB keeps the worst case under ~400 MB.
MAX_PICKLE_BYTES = 4 << 20
_MAX_BYTEORDER_BYTES = 16  # "little" or "big"
_READ_CHUNK = 1 << 16
_MALFORMED = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ArithmeticError,
              AttributeError, LookupError, TypeError, ValueError, RuntimeError, MemoryError)
_ADVICE = "re-save it with a current torch (torch.save(torch.load(...))) or convert to safetensors"


class _Torch(NamedTuple):
  """Inert stand-in for a torch dtype or storage type the pickle names (never torch itself).

  Immutable: these are shared by every load, and a pickle's BUILD opcode can set attributes.
  """
  name: str
  dtype: np.dtype | None  # None: UntypedStorage, whose tensors carry their own dtype


@dataclasses.dataclass
class _Storage:
  key: str
  dtype: np.dtype | None


@dataclasses.dataclass
class _Tensor:  # a pickle can BUILD-modify these, so PthFile._check validates them afterwards
  storage: str  # storage key: the zip member <prefix>/data/<storage>
  dtype: np.dtype
  offset: int  # in elements, like shape and stride
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, stride, requires_grad=False, hooks=None, meta=None):
  return _Tensor(storage.key, storage.dtype, offset, tuple(shape), tuple(stride))


def _rebuild_tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype, meta=None):
  return _Tensor(storage.key, dtype.dtype, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  return data


ALLOWED_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch.Size": tuple,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.storage.UntypedStorage": _Torch("torch.storage.UntypedStorage", None),
    **{f"torch.{s}": _Torch(f"torch.{s}", np.dtype(DTYPES[d])) for s, d in STORAGES.items()},
    **{f"torch.{d}": _Torch(f"torch.{d}", np.dtype(t)) for d, t in DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only ALLOWED_GLOBALS and turns persistent ids into storage records."""

  def __init__(self, file, path: Path):
    super().__init__(file)
    self._path = path

  def find_class(self, module: str, name: str):
    full = f"{module}.{name}"
    if full in ALLOWED_GLOBALS:
      return ALLOWED_GLOBALS[full]
    if module == "torch" and name.endswith("Storage"):
      raise CheckpointError(f"{self._path}: unsupported storage type {full}")
    raise CheckpointError(f"{self._path}: refusing to load: its pickle asks for {full}, which a "
                          "state dict never needs (the file may be malicious)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _Torch) and "Storage" in pid[1].name):
      raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r:.100}")
    return _Storage(str(pid[2]), pid[1].dtype)


def _flatten(obj, name: str, tensors: dict, extras: dict) -> None:
  if isinstance(obj, _Torch):
    extras[name] = obj.name
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _flatten(v, f"{name}.{k}" if name else str(k), tensors, extras)
  elif isinstance(obj, (list, tuple)) and any(isinstance(v, (_Tensor, dict, list, tuple))
                                              for v in obj):
    for i, v in enumerate(obj):
      _flatten(v, f"{name}.{i}" if name else str(i), tensors, extras)
  elif isinstance(obj, (_Tensor, _Storage)):
    if name in tensors or name in extras:
      raise ValueError(f"two entries flatten to the key {name!r}")
    tensors[name] = obj
  else:
    extras[name] = obj


def _indices(xs) -> bool:
  return isinstance(xs, tuple) and all(type(x) is int and x >= 0 for x in xs)


def common_prefix(keys: Iterable[str]) -> str:
  """The dotted prefix all keys share ("state_dict." for a wrapped state dict), or ""."""
  split = [k.split(".") for k in keys]
  if not split:
    return ""
  shared = os.path.commonprefix(split)[:min(len(s) for s in split) - 1]  # never a whole key
  return "".join(p + "." for p in shared)


class PthFile:
  """Index of one torch.save zip file; `read(key)` returns a fresh numpy array."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    self._size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(len(_LEGACY_MAGIC))
    try:
      zf = zipfile.ZipFile(self.path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
      if head.startswith(_LEGACY_MAGIC):
        what = "a legacy (torch < 1.6, non-zip) torch.save file, which this reader does not parse"
      elif head.startswith(b"PK"):
        what = (f"a damaged or truncated zip archive ({e}; {self._size} bytes); download it "
                "again")
      else:
        what = "not a PyTorch checkpoint (torch.save writes a zip archive)"
      raise CheckpointError(f"{self.path}: {what}; {_ADVICE}") from None
    with zf:
      self._parse(zf)

  def _parse(self, zf: zipfile.ZipFile) -> None:
    infos = {i.filename: i for i in zf.infolist()}
    pkls = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise CheckpointError(f"{self.path}: a zip archive but not a torch.save file "
                            f"({len(pkls)} '<folder>/data.pkl' entries); {_ADVICE}")
    prefix = pkls[0][:-len("data.pkl")]
    if prefix + "constants.pkl" in infos:
      raise CheckpointError(f"{self.path}: a TorchScript archive (torch.jit.save), not a state "
                            "dict; save the model's state_dict() with torch.save instead")
    try:
      order = (self._read_member(zf, infos[prefix + "byteorder"], _MAX_BYTEORDER_BYTES).strip()
               if prefix + "byteorder" in infos else b"little")
      if order not in (b"little", b"big"):
        raise CheckpointError(f"{self.path}: unknown byteorder {order!r}")
      self._swap = order.decode() != ("little" if np.little_endian else "big")
      pickled = self._read_member(zf, infos[pkls[0]], MAX_PICKLE_BYTES)
      root = _Unpickler(io.BytesIO(pickled), self.path).load()
      del pickled
      if not isinstance(root, dict):
        raise TypeError(f"holds a {type(root).__name__}, not a state dict")
      self._tensors: dict[str, _Tensor] = {}
      self.extras: dict[str, object] = {}
      _flatten(root, "", self._tensors, self.extras)
      if not self._tensors:
        raise CheckpointError(f"{self.path}: holds no tensors ({len(self.extras)} other entries), "
                              "so it is not a model's state dict")
      self._members: dict[str, tuple[int, int]] = {}  # storage key -> (data start, size)
      with open(self.path, "rb") as f:
        for key, t in self._tensors.items():
          self._check(key, t, infos.get(f"{prefix}data/{getattr(t, 'storage', None)}"), f)
    except CheckpointError:
      raise
    except _MALFORMED as e:  # a damaged archive fails in many ways; all mean "not usable"
      raise CheckpointError(f"{self.path}: unreadable archive or data.pkl "
                            f"({type(e).__name__}: {e})") from None

  def _read_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A zip member's bytes, refused when over `limit`: checked against the size the zip
    declares before inflating, and counted while inflating, since a crafted header can lie
    (zipfile itself also stops at the declared size, and its CRC check then fails)."""
    def too_big(size: str) -> CheckpointError:
      return CheckpointError(f"{self.path}: zip member {info.filename!r} inflates to {size} bytes, "
                             f"more than the {limit} a state dict needs (a damaged file or a "
                             "decompression bomb); refusing to read it")
    if info.file_size > limit:
      raise too_big(str(info.file_size))
    chunks, total = [], 0
    with zf.open(info) as f:  # in chunks: zipfile inflates as much as one read asks for
      while total <= limit and (chunk := f.read(min(_READ_CHUNK, limit + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
      raise too_big(f"more than {limit} (its header says {info.file_size})")
    return b"".join(chunks)

  def _check(self, key: str, t, info: zipfile.ZipInfo | None, f) -> None:
    """Every record field is checked here, after unpickling, so `read` can trust them."""
    def bad(why: str):
      return CheckpointError(f"{self.path}: tensor {key!r} {why}")
    if not (isinstance(t, _Tensor) and isinstance(t.storage, str) and _indices((t.offset,))
            and _indices(t.shape) and _indices(t.stride) and len(t.shape) == len(t.stride)
            and isinstance(t.dtype, np.dtype) and t.dtype in _NP_DTYPES):
      raise bad(f"is not a well-formed tensor record: {t!r:.200}")
    if info is None:
      raise bad(f"refers to storage {t.storage!r}, which the archive lacks")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
      raise bad(f"is stored compressed or encrypted ({info.filename}); torch.save never does; "
                + _ADVICE)
    if t.storage not in self._members:
      f.seek(info.header_offset)  # the local header's extra length differs from the directory's
      head = f.read(_LOCAL_HEADER.size)
      if len(head) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(head)[0] != b"PK\x03\x04":
        raise bad(f"has no valid zip entry header for {info.filename}")
      start = info.header_offset + _LOCAL_HEADER.size + sum(_LOCAL_HEADER.unpack(head)[-2:])
      if start + info.file_size > self._size:
        raise bad(f"data ends at byte {start + info.file_size} but the file has {self._size} "
                  "bytes: truncated")
      self._members[t.storage] = (start, info.file_size)
    end = (t.offset + 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride))) * t.dtype.itemsize
    if 0 not in t.shape and end > self._members[t.storage][1]:
      raise bad(f"needs bytes up to {end} of storage {t.storage!r}, which has "
                f"{self._members[t.storage][1]}")
    numel = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
    if numel * t.dtype.itemsize > self._members[t.storage][1]:
      # Stride-0 (expanded) views would materialise far more than the file holds: a state dict
      # never needs them, and a crafted file could use one to exhaust memory.
      raise bad(f"has {numel} elements but its storage {t.storage!r} holds only "
                f"{self._members[t.storage][1]} bytes (an expanded view)")

  def keys(self) -> list[str]:
    return list(self._tensors)

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def shape(self, key: str) -> tuple[int, ...]:
    return self._tensors[key].shape

  def dtype(self, key: str) -> np.dtype:
    return self._tensors[key].dtype

  def read(self, key: str) -> np.ndarray:
    t = self._tensors[key]
    if 0 in t.shape:
      return np.empty(t.shape, t.dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride))  # elements covering the view
    buf = np.empty(span, t.dtype)
    raw = memoryview(buf.view(np.uint8))
    start, _ = self._members[t.storage]
    try:
      with open(self.path, "rb") as f:
        f.seek(start + t.offset * t.dtype.itemsize)
        got = 0
        while got < len(raw) and (n := f.readinto(raw[got:])):
          got += n
    except OSError as e:  # the file changed or the disk failed since it was indexed
      raise CheckpointError(f"{self.path}: cannot read tensor {key!r} ({e})") from e
    if got != len(raw):
      raise CheckpointError(f"{self.path}: short read of tensor {key!r} (truncated file?)")
    if self._swap and t.dtype.itemsize > 1:
      buf.view(f"u{t.dtype.itemsize}").byteswap(inplace=True)
    contiguous = np.cumprod((1,) + t.shape[:0:-1])[::-1]  # C-order strides, in elements
    if all(n == 1 or s == c for n, s, c in zip(t.shape, t.stride, contiguous)):
      return buf.reshape(t.shape)
    strides = [s * t.dtype.itemsize for s in t.stride]
    return np.lib.stride_tricks.as_strided(buf, t.shape, strides, writeable=False).copy()

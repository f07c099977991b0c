"""Our streaming reader returns exactly what safetensors wrote, for every dtype checkpoints use."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wan_jax.weights.safetensors_reader import CheckpointError, SafetensorsFile, TensorStore


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16,
                                   torch.float8_e4m3fn, torch.float8_e5m2, torch.int64])
def test_values_round_trip(tmp_path, dtype):
  torch.manual_seed(0)
  tensors = {"a.weight": (torch.randn(7, 5) * 3).to(dtype), "b": torch.randn(3).to(dtype),
             "scalar": torch.tensor(1.5).to(dtype)}
  save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
  f = SafetensorsFile(tmp_path / "x.safetensors")
  assert f.metadata == {"format": "pt"}
  for key, want in tensors.items():
    got = f.read(key)
    assert got.shape == tuple(want.shape)
    np.testing.assert_array_equal(got.astype(np.float64), want.to(torch.float64).numpy())


def test_sharded_folder_with_index(tmp_path):
  save_file({"x": torch.ones(2)}, str(tmp_path / "m-1.safetensors"))
  save_file({"y": torch.zeros(3)}, str(tmp_path / "m-2.safetensors"))
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"x": "m-1.safetensors", "y": "m-2.safetensors"}}))
  store = TensorStore.open(tmp_path)
  assert sorted(store.keys()) == ["x", "y"] and store.shape("y") == (3,)
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"x": "m-1.safetensors", "z": "m-2.safetensors"}}))
  with pytest.raises(CheckpointError, match="no shard holds"):
    TensorStore.open(tmp_path)
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"x": "m-1.safetensors", "y": ["m-2.safetensors"]}}))
  with pytest.raises(CheckpointError, match=r"index.json: weight_map\['y'\] is \['m-2"):
    TensorStore.open(tmp_path)


def test_duplicate_tensor_across_shards(tmp_path):
  save_file({"x": torch.ones(2)}, str(tmp_path / "a.safetensors"))
  save_file({"x": torch.ones(2)}, str(tmp_path / "b.safetensors"))
  with pytest.raises(CheckpointError, match="appears in both"):
    TensorStore.open(tmp_path)


def test_garbage_header(tmp_path):
  path = tmp_path / "bad.safetensors"
  path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 8)
  with pytest.raises(CheckpointError, match="unreadable safetensors header"):
    SafetensorsFile(path)


def write_safetensors(path, header, data: bytes = b"", raw: bytes | None = None,
                      header_len: int | None = None):
  """A file in safetensors' layout with whatever header (or raw header bytes) a test wants."""
  blob = raw if raw is not None else json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob
                   + data)
  return path


def entry(begin, end, shape=(2,), dtype="F32"):
  return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


# name -> (header or raw header bytes, data bytes, what the error must say). Tensor "w" is the
# culprit wherever one is involved; each file is one the safetensors library also refuses.
BAD_HEADERS = {
    "negative_offsets": ({"w": entry(-8, 0)}, 16, r"tensor 'w'.*\[-8, 0\].*0 <= begin <= end"),
    "begin_after_end": ({"w": entry(8, 0)}, 16, r"tensor 'w'.*\[8, 0\]"),
    "overlapping": ({"a": entry(0, 8), "w": entry(4, 12)}, 16, r"tensor 'w' overlaps tensor 'a'"),
    "gap": ({"a": entry(0, 8), "w": entry(12, 20)}, 20,
            r"tensor 'w' starts at data byte 12, leaving bytes 8..12 owned by no tensor"),
    "uncovered_tail": ({"w": entry(0, 8)}, 16, r"last 8 of its 16 data bytes belong to no tensor"),
    "shape_mismatch": ({"w": entry(0, 8, shape=(3,))}, 8,
                       r"tensor 'w' has 8 bytes but shape \[3\] of F32 needs 12"),
    "list_header": (b"[1,2,3]", 0, r"header is a JSON list, not an object"),
    "entry_is_a_number": ({"w": 5}, 0, r"tensor 'w' has a header entry that is a JSON int"),
    "missing_dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, 8, r"tensor 'w' has no dtype"),
    "list_dtype": ({"w": entry(0, 8, dtype=["F32"])}, 8,
                   r"tensor 'w' has unknown or unsupported dtype \['F32'\]"),
    "unknown_dtype": ({"w": entry(0, 8, dtype="F99")}, 8,
                      r"tensor 'w' has unknown or unsupported dtype 'F99'"),
    "negative_shape": ({"w": entry(0, 8, shape=(-2,))}, 8,
                       r"tensor 'w' has shape \[-2\], not a list of non-negative integers"),
    "float_offsets": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, 8,
                      r"tensor 'w' has data_offsets \[0.0, 8.0\], not two integers"),
    "one_offset": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, 8,
                   r"tensor 'w' has data_offsets \[8\], not two integers"),
    "bad_metadata": ({"__metadata__": {"format": 1}, "w": entry(0, 8)}, 8,
                     r"__metadata__ must map strings to strings"),
    "past_the_end": ({"w": entry(0, 16, shape=(4,))}, 8,
                     r"is truncated: tensor 'w' ends at data byte 16"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_malformed_headers_are_refused_naming_file_and_tensor(tmp_path, case):
  header, n_data, message = BAD_HEADERS[case]
  raw = header if isinstance(header, bytes) else None
  path = write_safetensors(tmp_path / f"{case}.safetensors", header, b"\0" * n_data, raw=raw)
  with pytest.raises(safetensors.SafetensorError):  # the reference library refuses it too
    safe_open(str(path), "np")
  with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}:? .*{message}") as e:
    SafetensorsFile(path)
  assert "\n" not in str(e.value)


def test_header_length_beyond_the_file(tmp_path):
  path = write_safetensors(tmp_path / "long.safetensors", {"w": entry(0, 8)}, b"\0" * 8,
                           header_len=10**6)
  with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a safetensors file or truncated "
                                            r"\(header of 1000000 bytes in a \d+-byte file\)"):
    SafetensorsFile(path)


def test_duplicate_keys_are_refused(tmp_path):
  """The format forbids them; json.loads (and the Rust parser) would silently keep the last."""
  one = json.dumps({"w": entry(0, 8)})[1:-1]
  path = write_safetensors(tmp_path / "dup.safetensors", None, b"\0" * 8,
                           raw=f"{{{one},{one}}}".encode())
  with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: key 'w' appears twice"):
    SafetensorsFile(path)


def test_what_the_format_allows_is_read(tmp_path):
  """Ranges listed out of order, an empty tensor, null metadata, space padding: the library
  reads these files, and so do we."""
  header = {"__metadata__": None, "b": entry(8, 16), "e": entry(8, 8, shape=(0, 3)),
            "a": entry(0, 8, shape=(2,), dtype="U32")}
  blob = json.dumps(header).encode() + b"    "
  data = np.arange(4, dtype=np.uint32).tobytes()
  path = write_safetensors(tmp_path / "ok.safetensors", None, data, raw=blob)
  with safe_open(str(path), "np") as ref:
    assert sorted(ref.keys()) == ["a", "b", "e"]
  f = SafetensorsFile(path)
  assert f.metadata == {} and f.shape("e") == (0, 3)
  np.testing.assert_array_equal(f.read("a"), [0, 1])
  assert f.read("b").tobytes() == data[8:]

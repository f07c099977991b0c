"""Our .pth reader returns exactly what torch.save wrote, and refuses anything but a state dict."""

from __future__ import annotations

import collections
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_jax.weights import pth_reader
from wan_jax.weights.pth_reader import CheckpointError, PthFile, common_prefix

REPO = Path(__file__).resolve().parent.parent


def _state_dict() -> dict:
  torch.manual_seed(0)
  shared = torch.arange(24, dtype=torch.float32)  # one storage, two views at different offsets
  return collections.OrderedDict(
      f32=torch.randn(3, 5),
      bf16=(torch.randn(4, 3) * 100).bfloat16(),
      f16=torch.randn(7).half(),
      i64=torch.arange(-5, 5) * (1 << 40),
      mask=torch.tensor([True, False, True]),
      transposed=torch.randn(3, 4).t(),
      view_a=shared[2:5],
      view_b=shared[10:16].view(2, 3),
      scalar=torch.tensor(2.5),
      empty=torch.empty(0, 3),
      f8=torch.randn(6).to(torch.float8_e4m3fn),
      f8b=torch.randn(6).to(torch.float8_e5m2),
      param=torch.nn.Parameter(torch.randn(2, 2)),
      nested=collections.OrderedDict(
          inner=collections.OrderedDict(w=torch.ones(2, dtype=torch.int8)), note="hi"),
      step=7,
      name="wan",
  )


def _bits(t: torch.Tensor) -> bytes:
  return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same(got: np.ndarray, want: torch.Tensor):
  assert got.shape == tuple(want.shape) and got.flags.c_contiguous
  assert got.dtype.itemsize == want.element_size()
  assert got.tobytes() == _bits(want)
  np.testing.assert_array_equal(got.astype(np.float32), want.detach().float().numpy())


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict]:
  sd = _state_dict()
  torch.save(sd, tmp_path / "model.pth")
  return tmp_path / "model.pth", sd


def _rewrite(src: Path, dst: Path, replace: dict | None = None, swap: bool = False,
             compression: int = zipfile.ZIP_STORED, zip64: bool = False) -> Path:
  """A copy of a torch.save archive made by Python's zipfile, members replaced by name suffix."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
    for info in zin.infolist():
      data = zin.read(info.filename)
      suffix = info.filename.split("/", 1)[1]
      if swap and suffix.startswith("data/"):  # float32 data only
        data = np.frombuffer(data, np.float32).byteswap().tobytes()
      data = (replace or {}).get(suffix, data)
      with zout.open(info.filename, "w", force_zip64=zip64) as w:
        w.write(data)
  return dst


def test_values_match_torch(saved):
  path, sd = saved
  f = PthFile(path)
  tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
  tensors["nested.inner.w"] = sd["nested"]["inner"]["w"]
  assert sorted(f.keys()) == sorted(tensors)
  assert f.extras == {"nested.note": "hi", "step": 7, "name": "wan"}
  for key, want in tensors.items():
    assert key in f and f.shape(key) == tuple(want.shape)
    assert f.dtype(key).name == str(want.dtype).removeprefix("torch.")
    _assert_same(f.read(key), want)
  assert "missing" not in f
  # The cases this test claims to cover really are in the file.
  t = f._tensors
  assert t["transposed"].shape == (4, 3) and t["transposed"].stride == (1, 4)
  assert t["view_a"].storage == t["view_b"].storage
  assert (t["view_a"].offset, t["view_b"].offset) == (2, 10)
  assert f.shape("scalar") == () and f.read("scalar").item() == 2.5


def test_dtypes_are_numpy_and_ml_dtypes(saved):
  f = PthFile(saved[0])
  assert f.dtype("bf16").name == "bfloat16" and f.dtype("f8").name == "float8_e4m3fn"
  assert f.dtype("mask") == np.bool_ and f.dtype("i64") == np.int64


def test_wrapped_state_dict_flattens_with_dots(tmp_path):
  torch.save({"state_dict": {"enc.w": torch.ones(2), "enc.b": torch.zeros(1)}, "epoch": 3,
              "dtype": torch.float16, "shape": torch.Size([2, 3])}, tmp_path / "w.pth")
  f = PthFile(tmp_path / "w.pth")
  assert f.keys() == ["state_dict.enc.w", "state_dict.enc.b"]
  assert common_prefix(f.keys()) == "state_dict.enc."
  assert common_prefix(["state_dict.a", "state_dict.b.c"]) == "state_dict."
  assert common_prefix(["a.w", "b.w"]) == "" and common_prefix(["a.w"]) == "a."
  assert f.extras == {"epoch": 3, "dtype": "torch.float16", "shape": (2, 3)}


def test_zip64_local_headers(saved, tmp_path):
  """Python's zipfile with force_zip64 writes the zip64 extra field and no alignment padding."""
  path, sd = saved
  f = PthFile(_rewrite(path, tmp_path / "z64.pth", zip64=True))
  _assert_same(f.read("transposed"), sd["transposed"])
  _assert_same(f.read("view_b"), sd["view_b"])


def test_big_endian_archive(tmp_path):
  sd = {"w": torch.randn(3, 4), "t": torch.randn(2, 5).t()}
  torch.save(sd, tmp_path / "le.pth")
  f = PthFile(_rewrite(tmp_path / "le.pth", tmp_path / "be.pth", {"byteorder": b"big"}, swap=True))
  for key, want in sd.items():
    _assert_same(f.read(key), want)


def _evil(call):
  class Evil:
    def __reduce__(self):
      return call

  return Evil()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["system", "eval"])
def test_malicious_pickle_is_refused_without_running(saved, tmp_path, kind, protocol):
  marker = tmp_path / "pwned"
  call = ((os.system, (f"touch {marker}",)) if kind == "system"
          else (eval, (f"open({str(marker)!r}, 'w').close()",)))
  payload = pickle.dumps(collections.OrderedDict(w=_evil(call)), protocol=protocol)
  # The payload is live: plain pickle runs it.
  pickle.loads(payload)
  assert marker.exists()
  marker.unlink()
  bad = _rewrite(saved[0], tmp_path / "evil.pth", {"data.pkl": payload})
  with pytest.raises(CheckpointError, match=f"evil.pth.*(posix|os|builtins|__builtin__)\\.{kind}"):
    PthFile(bad)
  assert not marker.exists()


def test_arbitrary_class_is_refused(saved, tmp_path):
  payload = pickle.dumps({"w": collections.Counter("ab")}, protocol=2)
  with pytest.raises(CheckpointError, match="collections.Counter"):
    PthFile(_rewrite(saved[0], tmp_path / "c.pth", {"data.pkl": payload}))


def _cyclic() -> dict:
  d: dict = {}
  d["self"] = d
  return d


@pytest.mark.parametrize("payload", [b"\x80\x02}q\x00(X\x01", pickle.dumps(_cyclic(), 2),
                                     pickle.dumps([1, 2], 2)], ids=["cut", "cycle", "list"])
def test_malformed_pickle(saved, tmp_path, payload):
  with pytest.raises(CheckpointError, match="bad.pth: unreadable archive or data.pkl"):
    PthFile(_rewrite(saved[0], tmp_path / "bad.pth", {"data.pkl": payload}))


def _u(s: str) -> bytes:
  return b"X" + struct.pack("<I", len(s)) + s.encode()


def _g(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _hand_pickle(after_storage_type: bytes = b"", after_tensor: bytes = b"") -> bytes:
  """{"w": 8 floats of storage "0"} the way torch writes it, with opcodes spliced in."""
  tensor = (_g("torch._utils", "_rebuild_tensor_v2") + b"((" + _u("storage")
            + _g("torch", "FloatStorage") + after_storage_type + _u("0") + _u("cpu")
            + b"K\x08tQK\x00K\x08\x85K\x01\x85\x89" + _g("collections", "OrderedDict")
            + b")RtR")
  return (b"\x80\x02" + _g("collections", "OrderedDict") + b")R(" + _u("w") + tensor
          + after_tensor + b"u.")


def _build(field: str, value: bytes) -> bytes:
  return b"N}" + _u(field) + value + b"s\x86b"  # BUILD with state (None, {field: value})


def test_build_opcode_cannot_tamper(tmp_path):
  """BUILD sets attributes: on a tensor record the checks still apply; shared stand-ins refuse."""
  torch.save({"w": torch.arange(8.0)}, tmp_path / "w.pth")
  good = PthFile(_rewrite(tmp_path / "w.pth", tmp_path / "hand.pth", {"data.pkl": _hand_pickle()}))
  _assert_same(good.read("w"), torch.arange(8.0))
  bad = _rewrite(tmp_path / "w.pth", tmp_path / "strided.pth",
                 {"data.pkl": _hand_pickle(after_tensor=_build("stride", b"K\x64\x85"))})
  with pytest.raises(CheckpointError, match="tensor 'w' needs bytes up to"):
    PthFile(bad)
  to_half = _build("dtype", _g("torch", "float16"))
  bad = _rewrite(tmp_path / "w.pth", tmp_path / "retype.pth",
                 {"data.pkl": _hand_pickle(after_storage_type=to_half)})
  with pytest.raises(CheckpointError, match="unreadable"):
    PthFile(bad)
  assert PthFile(tmp_path / "hand.pth").dtype("w") == np.float32  # FloatStorage still float32


def test_truncated_file(saved, tmp_path):
  data = saved[0].read_bytes()
  (tmp_path / "half.pth").write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match="half.pth.*truncated"):
    PthFile(tmp_path / "half.pth")


def test_storage_shorter_than_tensor(tmp_path):
  torch.save({"w": torch.ones(8)}, tmp_path / "w.pth")
  bad = _rewrite(tmp_path / "w.pth", tmp_path / "short.pth", {"data/0": b"\0" * 16})
  with pytest.raises(CheckpointError, match="short.pth.*tensor 'w' needs bytes up to 32"):
    PthFile(bad)


def test_compressed_member_is_refused(saved, tmp_path):
  with pytest.raises(CheckpointError, match="compressed"):
    PthFile(_rewrite(saved[0], tmp_path / "zip.pth", compression=zipfile.ZIP_DEFLATED))


def test_legacy_format(tmp_path):
  torch.save({"w": torch.ones(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointError, match="old.pth.*legacy.*safetensors"):
    PthFile(tmp_path / "old.pth")


def test_random_bytes(tmp_path):
  (tmp_path / "noise.pth").write_bytes(random.Random(0).randbytes(4096))
  with pytest.raises(CheckpointError, match="noise.pth: not a PyTorch checkpoint"):
    PthFile(tmp_path / "noise.pth")


def test_unsupported_storage_type(tmp_path):
  torch.save({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.pth")
  with pytest.raises(CheckpointError, match="unsupported storage type torch.ComplexFloatStorage"):
    PthFile(tmp_path / "c.pth")


def test_torchscript_archive(tmp_path):
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pth")
  with pytest.raises(CheckpointError, match="TorchScript"):
    PthFile(tmp_path / "ts.pth")


def test_works_with_torch_blocked(saved):
  code = ("import sys; sys.modules['torch'] = None\n"
          "from wan_jax.weights.pth_reader import PthFile\n"
          f"f = PthFile({str(saved[0])!r})\n"
          "print(f.read('transposed').tobytes().hex(), f.read('bf16').tobytes().hex())\n"
          "assert sys.modules['torch'] is None\n")
  out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stderr
  sd = saved[1]
  assert out.stdout.split() == [_bits(sd["transposed"]).hex(), _bits(sd["bf16"]).hex()]


def test_expanded_views_are_refused(tmp_path):
  """A stride-0 view would materialise far more than the file holds (a memory bomb)."""
  path = tmp_path / "expanded.pth"
  torch.save({"ok": torch.ones(3), "big": torch.zeros(1).expand(1000)}, path)
  with pytest.raises(CheckpointError, match="'big' has 1000 elements.*expanded view"):
    PthFile(path)


def _deflated_pickle(src: Path, dst: Path, payload: bytes | None = None) -> Path:
  """A copy of a torch.save archive whose data.pkl (only) is deflated, optionally replaced."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
      pkl = info.filename.endswith("/data.pkl")
      data = payload if pkl and payload is not None else zin.read(info.filename)
      zout.writestr(info.filename, data, zipfile.ZIP_DEFLATED if pkl else zipfile.ZIP_STORED)
  return dst


def _claim_size(path: Path, member_suffix: str, size: int) -> None:
  """Rewrites the uncompressed size a zip declares for one member (local and central headers)."""
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as zf:
    info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
  struct.pack_into("<I", data, info.header_offset + 22, size)
  at = data.index(b"PK\x01\x02")
  while at >= 0:
    name_len = struct.unpack_from("<H", data, at + 28)[0]
    if bytes(data[at + 46:at + 46 + name_len]).decode().endswith(member_suffix):
      struct.pack_into("<I", data, at + 24, size)
    at = data.find(b"PK\x01\x02", at + 46)
  path.write_bytes(bytes(data))


def _peak_bytes(fn) -> int:
  tracemalloc.start()
  try:
    fn()
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return peak


def test_deflate_bomb_is_refused_without_inflating(saved, tmp_path, monkeypatch):
  """A data.pkl that inflates past the cap (here lowered to 1 MiB; 4 MiB in use) is refused
  from the size the zip declares, before a byte is inflated."""
  path, sd = saved
  ok = PthFile(_deflated_pickle(path, tmp_path / "deflated.pth"))  # a deflated pickle is fine
  _assert_same(ok.read("transposed"), sd["transposed"])
  monkeypatch.setattr(pth_reader, "MAX_PICKLE_BYTES", 1 << 20)
  bomb = _deflated_pickle(path, tmp_path / "bomb.pth", b"\0" * (8 << 20))
  assert bomb.stat().st_size < 64 << 10

  def refused():
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bomb))}: zip member "
                                              r"'.*/data.pkl' inflates to 8388608 bytes, more "
                                              r"than the 1048576.*decompression bomb"):
      PthFile(bomb)
  assert _peak_bytes(refused) < 256 << 10


def test_a_zip_header_that_lies_about_the_size_does_not_inflate_more(saved, tmp_path,
                                                                     monkeypatch):
  """Declared 4 KB, really 8 MiB: at most the declared size is inflated, then the CRC fails."""
  monkeypatch.setattr(pth_reader, "MAX_PICKLE_BYTES", 1 << 20)
  bomb = _deflated_pickle(saved[0], tmp_path / "liar.pth", b"\0" * (8 << 20))
  _claim_size(bomb, "/data.pkl", 4096)

  def refused():
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bomb))}: unreadable archive or "
                                              r"data.pkl \(BadZipFile: Bad CRC"):
      PthFile(bomb)
  assert _peak_bytes(refused) < 256 << 10


def test_a_pickle_without_tensors_is_refused(tmp_path):
  torch.save({"epoch": 3, "note": "x" * 100}, tmp_path / "meta.pth")
  with pytest.raises(CheckpointError, match=r"meta.pth: holds no tensors \(2 other entries\)"):
    PthFile(tmp_path / "meta.pth")

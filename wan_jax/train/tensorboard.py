"""Scalars in TensorBoard's event-file format, written without TensorFlow or tensorboard.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, payload,
masked CRC-32C of the payload); each payload is an `Event` protocol buffer. Only the few fields a
scalar needs are encoded here: wall_time (1, double), step (2, int64), file_version (3, string)
and summary (5) -> value (1) -> tag (1, string), simple_value (2, float).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for byte in data:
    c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    bits = n & 0x7F
    n >>= 7
    if n:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, *, summary: bytes = b"", version: str = "") -> bytes:
  out = bytes([0x09]) + struct.pack("<d", wall_time) + bytes([0x10]) + _varint(step)
  if version:
    out += _field(3, version.encode())
  if summary:
    out += _field(5, summary)
  return out


def _record(payload: bytes) -> bytes:
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", _masked(crc32c(length))) + payload
          + struct.pack("<I", _masked(crc32c(payload))))


class ScalarWriter:
  """Appends scalars to one event file under `logdir` (one file per process and run)."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.logdir / name
    self._file = open(self.path, "ab")
    self._file.write(_record(_event(0, time.time(), version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    summary = b"".join(
        _field(1, _field(1, tag.encode()) + bytes([0x15]) + struct.pack("<f", float(v)))
        for tag, v in values.items())
    self._file.write(_record(_event(step, time.time(), summary=summary)))
    self._file.flush()

  def close(self) -> None:
    self._file.close()

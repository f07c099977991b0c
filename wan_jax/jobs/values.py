"""Reading a job file's values by key path, with the checks that make errors one line.

`Section` wraps one mapping of the file and its key path (`config.process[0].datasets[1]`).
Every read is recorded, so after mapping `unused` can list exactly the keys nobody read; every
read checks the value's type, so a wrong one stops the run with a line naming the key path
instead of failing later inside the trainer.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class JobError(ValueError):
  """The job file cannot run as written; the message names the key path."""


def _int(value: Any) -> int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return None


def _float(value: Any) -> float | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and _NUMBER.match(value.strip()):  # "1e-4" quoted in the file
    return float(value)
  return None


def _frames(value: Any) -> int | None:
  n = _int(value)
  return n if n is not None and n >= 1 and (n - 1) % 4 == 0 else None


def _sizes(value: Any) -> list[int] | None:
  values = value if isinstance(value, list) else [value]
  sizes = [_int(v) for v in values]
  return sizes if sizes and all(s is not None and s >= 16 for s in sizes) else None


def _texts(value: Any) -> list[str] | None:
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return list(value)
  return None


# kind -> (convert: value -> converted or None when wrong, what the key must be)
KINDS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    int: (_int, "a whole number"),
    float: (_float, "a number"),
    bool: (lambda v: v if isinstance(v, bool) else None, "true or false"),
    str: (lambda v: v if isinstance(v, str) else None, "text"),
    list: (lambda v: v if isinstance(v, list) else None, "a list"),
    dict: (lambda v: v if isinstance(v, dict) else None, "a mapping (key: value lines)"),
    "frames": (_frames, "1 or 4k+1 frames (5, 9, ..., 81): the VAE compresses 4 frames after "
                        "the first"),
    "sizes": (_sizes, "one size >= 16 pixels or a list of them (e.g. [512, 768])"),
    "texts": (_texts, "a list of texts"),
    "any": (lambda v: v, "anything"),
}


def _show(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str | int) -> str:
  if isinstance(key, int):
    return f"{path}[{key}]"
  return f"{path}.{key}" if path else str(key)


class Section:
  """One mapping of the job file at `path`; the reads of the whole file are shared."""

  def __init__(self, data: dict[str, Any], path: str, read: set[str] | None = None,
               entered: set[str] | None = None):
    self.data, self.path = data, path
    self.read = read if read is not None else set()  # paths whose value was used whole
    self.entered = entered if entered is not None else set()  # sections read key by key

  def get(self, key: str, kind: Any, default: Any) -> Any:
    """The value at `key` as `kind` (null or absent: `default`); JobError naming the path if
    it is of another kind."""
    where = _join(self.path, key)
    self.read.add(where)
    value = self.data.get(key)
    if value is None:
      return default
    convert, want = KINDS[kind]
    out = convert(value)
    if out is None or (isinstance(out, float) and not math.isfinite(out)):
      raise JobError(f"{where} must be {want}, got {_show(value)}")
    return out

  def section(self, key: str, required: bool = False) -> Section:
    """The mapping at `key` (absent or null: an empty one)."""
    where = _join(self.path, key)
    value = self.data.get(key)
    if value is None and required:
      raise JobError(f"{where} is missing")
    if value is not None and not isinstance(value, dict):
      raise JobError(f"{where} must be {KINDS[dict][1]}, got {_show(value)}")
    self.entered.add(where)
    return Section(value or {}, where, self.read, self.entered)

  def item(self, key: str, index: int) -> Section:
    """The mapping at `key[index]` of a list (the list itself was read with `get`)."""
    where = _join(_join(self.path, key), index)
    value = self.data[key][index]
    if not isinstance(value, dict):
      raise JobError(f"{where} must be {KINDS[dict][1]}, got {_show(value)}")
    self.entered.update({_join(self.path, key), where})
    self.read.discard(_join(self.path, key))  # its items are reported one by one
    return Section(value, where, self.read, self.entered)

  def unused(self, reason: Callable[[str, str], str],
             is_off: Callable[[Any], bool]) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, reason) of every key never read, and the paths of those that are merely off; a
    section nobody entered is reported once as a whole."""
    unused: list[tuple[str, str]] = []
    off: list[str] = []

    def walk(value: Any, path: str, section: str) -> None:
      children = (value.items() if isinstance(value, dict) else enumerate(value))
      for key, child in children:
        where = _join(path, key)
        if where in self.read:
          continue
        if where in self.entered:
          walk(child, where, section if isinstance(key, int) else str(key))
        elif is_off(child):
          off.append(where)
        else:
          unused.append((where, reason(section, str(key))))

    walk(self.data, self.path, "")
    return unused, off

"""Reading an ai-toolkit job file (YAML) into plain data, as ai-toolkit reads it, within bounds.

As in ai-toolkit, `${VAR}` is replaced from the environment, `[name]` in any string by
`config.name`, and YAML numbers like `1e-4` are read as numbers (PyYAML's YAML 1.1 reads them
as text). A hostile or broken file is one line (JobError) in bounded time and memory. Mapping
the data onto our config is ai_toolkit.py's.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from wan_jax.jobs.values import JobError

JOB_SUFFIXES = (".yaml", ".yml")
MAX_BYTES = 1 << 20  # a job file is a few KiB
MAX_VALUES = 100_000  # values after YAML aliases are expanded (a job holds a few hundred)
ENV_VAR = re.compile(r"\$\{([^}]+)\}")


class _Loader(yaml.SafeLoader):
  """SafeLoader that reads `1e-4` as a float, as ai-toolkit's loader does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def is_job_file(path: str) -> bool:
  return path.lower().endswith(JOB_SUFFIXES)


def read_job(path: str | os.PathLike) -> dict[str, Any]:
  """The file's data after ai-toolkit's `${VAR}` and `[name]` substitutions.

  A hostile or broken file is one line within bounded time and memory: a file over MAX_BYTES,
  one that is not UTF-8, nesting deeper than the parser's stack, and YAML aliases that would
  expand to more than MAX_VALUES values (a "billion laughs") or refer to themselves.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read(MAX_BYTES + 1)
  except OSError as e:
    raise JobError(f"cannot read the job file {path}: {e.strerror}") from None
  if len(raw) > MAX_BYTES:
    raise JobError(f"{path} is larger than {MAX_BYTES // 2**20} MiB: not an ai-toolkit job file")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise JobError(f"{path} is not a UTF-8 text file (byte {e.start} is 0x{raw[e.start]:02x}): "
                   "not an ai-toolkit job file") from None

  def env(m: re.Match) -> str:
    if m.group(1) not in os.environ:
      raise JobError(f"{path} uses ${{{m.group(1)}}} but that environment variable is not set")
    return os.environ[m.group(1)]

  try:
    data = yaml.load(ENV_VAR.sub(env, text), Loader=_Loader)
  except RecursionError:
    raise JobError(f"{path} nests its values too deeply to be read (an ai-toolkit job is a few "
                   "levels deep)") from None
  except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
    raise JobError(f"{path} is not valid YAML: {' '.join(str(e).split())[:300]}") from None
  if not isinstance(data, dict):
    raise JobError(f"{path} is not an ai-toolkit job (a mapping with job: and config:)")
  _check_size(data, path)
  name = (data.get("config") or {}).get("name") if isinstance(data.get("config"), dict) else None
  return _replace_name(data, name) if isinstance(name, str) else data


def _check_size(data: Any, path: str | os.PathLike) -> None:
  """Refuses data whose YAML aliases expand to more than MAX_VALUES values or refer to
  themselves; PyYAML shares an aliased node, so this counts each shared node once (memo)."""
  sizes: dict[int, int] = {}
  open_nodes: set[int] = set()

  def size(value: Any) -> int:
    if not isinstance(value, (dict, list)):
      return 1
    key = id(value)
    if key in sizes:
      return sizes[key]
    if key in open_nodes:
      raise JobError(f"{path}: a YAML alias refers to a value that contains it (endless); a job "
                     "file is a tree")
    open_nodes.add(key)
    total = 1
    for item in (value.values() if isinstance(value, dict) else value):
      total += size(item)
      if total > MAX_VALUES:
        raise JobError(f"{path} expands to more than {MAX_VALUES:,} values through its YAML "
                       "aliases (&name / *name); an ai-toolkit job holds a few hundred")
    open_nodes.discard(key)
    sizes[key] = total
    return total

  size(data)


def _replace_name(value: Any, name: str) -> Any:
  if isinstance(value, str):
    return value.replace("[name]", name)
  if isinstance(value, dict):
    return {k: _replace_name(v, name) for k, v in value.items()}
  if isinstance(value, list):
    return [_replace_name(v, name) for v in value]
  return value

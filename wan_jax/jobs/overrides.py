"""Command-line overrides (`--config.<key>=<value>`) checked against the config first.

ml_collections reports a mistyped key as a traceback (AttributeError with its own suggestion
buried in it), an index past the end of `datasets` as a bare IndexError, and refuses lists
(`--config.preview.prompts=[...]`) outright. Here each override's key path is walked on the
loaded config before absl applies anything, so a mistake is one line that names the key and
what would be right; list-valued keys are taken here, as JSON or Python lists.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from typing import Any

import ml_collections
from ml_collections.config_flags import config_path

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.S)


class OverrideError(ValueError):
  """A `--config.<key>` that cannot apply to this config; one line."""


def _name(fields: list[Any]) -> str:
  out = ""
  for f in fields:
    out += f"[{f}]" if isinstance(f, int) else (f".{f}" if out else str(f))
  return out


def _walk(cfg: ml_collections.ConfigDict, path: str) -> Any:
  """The value at `path`; OverrideError naming the first part that does not exist."""
  try:
    fields = config_path.split(path)
  except ValueError:
    raise OverrideError(f"--config.{path}: cannot read this key path (keys look like "
                        "train.steps or datasets[0].folder_path)") from None
  node: Any = cfg
  for i, field in enumerate(fields):
    here, at = _name(fields[:i]), _name(fields[:i + 1])
    if isinstance(node, (list, tuple)):
      if not isinstance(field, int):
        raise OverrideError(f"--config.{path}: {here} is a list; pick an entry, e.g. "
                            f"{here}[0]")
      if not 0 <= field < len(node):
        entries = "entry" if len(node) == 1 else "entries"
        raise OverrideError(
            f"--config.{path}: {here} has {len(node)} {entries} ({here}[0]"
            f"{f'..{here}[{len(node) - 1}]' if len(node) > 1 else ''}); another entry has to "
            "be added in the config file, not on the command line")
      node = node[field]
    elif isinstance(node, ml_collections.ConfigDict):
      if isinstance(field, int) or field not in node:
        keys = [str(k) for k in node.keys()]
        close = difflib.get_close_matches(str(field), keys, n=1, cutoff=0.6)
        hint = (f"did you mean {_name([*fields[:i], close[0]])}?" if close else
                f"{here or 'the config'} has: {', '.join(keys)}")
        raise OverrideError(f"--config.{path}: there is no key {at}; {hint}")
      node = node[field]
    else:
      raise OverrideError(f"--config.{path}: {here} is a value ({node!r}), not a section")
  return node


def _as_list(path: str, text: str | None) -> list[Any]:
  """A list from the command line: JSON or a Python literal; one bare text is a list of one."""
  if text is None:
    raise OverrideError(f"--config.{path} takes a list, e.g. --config.{path}='[\"a\", \"b\"]'")
  for parse in (json.loads, ast.literal_eval):
    try:
      value = parse(text)
    except (ValueError, SyntaxError):
      continue
    if isinstance(value, (list, tuple)):
      if not all(isinstance(v, (str, int, float)) for v in value):
        break
      return list(value)
  if text.lstrip().startswith(("[", "(")):
    raise OverrideError(f"--config.{path}: {text!r} is not a list of texts or numbers; write "
                        f"it as JSON, e.g. --config.{path}='[\"a\", \"b\"]'")
  return [text]


def split_overrides(cfg: ml_collections.ConfigDict, argv: list[str]
                    ) -> tuple[list[str], dict[str, list[Any]]]:
  """Checks every override's key path on `cfg`; returns argv without the list-valued ones and
  those as {path: list} to set after absl has applied the others."""
  keep: list[str] = []
  lists: dict[str, list[Any]] = {}
  args = iter(enumerate(argv))
  for i, arg in args:
    m = _OVERRIDE.match(arg)
    if not m or i == 0:
      keep.append(arg)
      continue
    path, text = m.group(1), m.group(2)
    value = _walk(cfg, path)
    if isinstance(value, list) and not any(isinstance(v, ml_collections.ConfigDict)
                                           for v in value):
      if text is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        text = next(args)[1]  # `--config.key value`
      lists[path] = _as_list(path, text)
      continue
    keep.append(arg)
  return keep, lists


def apply_lists(cfg: ml_collections.ConfigDict, lists: dict[str, list[Any]]) -> None:
  for path, value in lists.items():
    fields = config_path.split(path)
    holder = cfg
    for f in fields[:-1]:
      holder = holder[f]
    holder[fields[-1]] = value

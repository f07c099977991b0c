"""Loading a Python config file, `file.py[:variant]`, as launch.py and sample.py take it."""

from __future__ import annotations

import importlib.util

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config(variant) of a Python config file given as `file.py[:variant]`."""
  file, _, variant = str(path).partition(":")
  spec = importlib.util.spec_from_file_location("wan_jax_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([variant] if variant else []))

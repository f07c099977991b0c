"""Our streaming reader returns exactly what safetensors wrote, for every dtype checkpoints use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
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

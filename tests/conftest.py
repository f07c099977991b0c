import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reference import make_reference, save_comfyui_file, save_official_expert  # noqa: E402


@pytest.fixture(autouse=True)
def _private_scan_cache(tmp_path_factory, monkeypatch):
  """Scan caches go to a temporary folder, never the user's ~/.cache."""
  monkeypatch.setenv("WAN_JAX_CACHE", str(tmp_path_factory.mktemp("wan_jax_cache")))


@pytest.fixture(scope="session")
def high_ref():
  return make_reference(seed=1)


@pytest.fixture(scope="session")
def low_ref():
  return make_reference(seed=2)


@pytest.fixture(scope="session")
def diffusers_release(tmp_path_factory, high_ref, low_ref) -> Path:
  """Wan2.2-T2V-A14B-Diffusers layout: transformer/ (high), transformer_2/ (low), sharded."""
  root = tmp_path_factory.mktemp("diffusers_release")
  high_ref.save_pretrained(root / "transformer", max_shard_size="60KB")
  low_ref.save_pretrained(root / "transformer_2", max_shard_size="60KB")
  (root / "model_index.json").write_text("{}")
  return root


@pytest.fixture(scope="session")
def official_release(tmp_path_factory, high_ref, low_ref) -> Path:
  """Wan2.2-T2V-A14B layout: high_noise_model/ and low_noise_model/, sharded with an index."""
  root = tmp_path_factory.mktemp("official_release")
  save_official_expert(high_ref, root / "high_noise_model")
  save_official_expert(low_ref, root / "low_noise_model")
  return root


@pytest.fixture(scope="session")
def comfyui_file(tmp_path_factory, high_ref) -> Path:
  path = tmp_path_factory.mktemp("comfyui") / "wan2.2_t2v_high_noise_14B_bf16.safetensors"
  save_comfyui_file(high_ref, path)
  return path

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache per test session, set before JAX is imported so this
# process, the pytest-xdist workers and every launch.py/converter subprocess (they inherit the
# environment) share it: the tiny graphs that many tests train again (each train() call jits
# anew, each subprocess starts cold) compile once. WAN_JAX_TEST_XLA_CACHE=<folder> keeps one
# across sessions for a quicker edit-test loop.
_KEPT_XLA_CACHE = os.environ.get("WAN_JAX_TEST_XLA_CACHE")
_SESSION_XLA_CACHE = os.environ.get("WAN_JAX_TEST_SESSION_XLA_CACHE")  # from the xdist controller
_OWNS_XLA_CACHE = not (_KEPT_XLA_CACHE or _SESSION_XLA_CACHE)
XLA_CACHE = Path(_KEPT_XLA_CACHE or _SESSION_XLA_CACHE
                 or tempfile.mkdtemp(prefix="wan_jax_test_xla_"))
os.environ["WAN_JAX_TEST_SESSION_XLA_CACHE"] = str(XLA_CACHE)
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests are compile-bound (tiny models, many graphs): LLVM's optimisation of XLA's CPU code
# costs more than it saves here (measured in docs/testing.md). Results may differ from the default
# level in the last bits (fused multiply-adds); every comparison in the tests is between runs
# made under the same setting, or against PyTorch within the tolerances of the brief.
# WAN_JAX_TEST_XLA_OPT=default runs the tests with XLA's default CPU optimisation.
if os.environ.get("WAN_JAX_TEST_XLA_OPT", "0") != "default" and \
    "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
if "jax" in sys.modules:  # a plugin imported JAX first: its config has read the environment
  sys.modules["jax"].config.update("jax_compilation_cache_dir", str(XLA_CACHE))

sys.path.insert(0, str(Path(__file__).parent))

from reference import make_reference, save_comfyui_file, save_official_expert  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  if _OWNS_XLA_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


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

"""Two processes (two "hosts", gloo collectives on the CPU) train like one process with the
same two devices: each reads its own rows, the weights are placed without cross-host copies,
checkpoints, LoRA export and previews are collective and written once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from wan_jax.data.demo import make_demo_dataset

from helpers import with_devices

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _args(workdir: Path, data: Path, cache: Path) -> list[str]:
  return [sys.executable, str(REPO / "launch.py"), "--workdir", str(workdir), "--noprogress",
          "--config.train.steps=4", "--config.train.switch_boundary_every=2",  # both experts
          "--config.checkpoint.every=2", "--config.save.every=0",
          "--config.preview.every=4", "--config.preview.num_steps=1",
          "--config.save.dtype=float32", "--config.mesh.min_shard_size=0",
          f"--config.cache.dir={cache}", f"--config.datasets[0].folder_path={data / 'media'}",
          f"--config.datasets[0].mask_path={data / 'masks'}"]


def _losses(workdir: Path) -> list[float]:
  return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one_with_two_devices(tmp_path):
  make_demo_dataset(tmp_path / "data")
  base = dict(os.environ, JAX_PLATFORMS="cpu")
  single = subprocess.run(_args(tmp_path / "single", tmp_path / "data", tmp_path / "cache"),
                          env=base | {"XLA_FLAGS": with_devices(base.get("XLA_FLAGS", ""), 2)},
                          capture_output=True, text=True, timeout=900, cwd=REPO)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(
      _args(tmp_path / "multi", tmp_path / "data", tmp_path / "cache"),
      env=base | {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                  "JAX_PROCESS_ID": str(i), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "3 batches per epoch of 1 per process" in outs[1][0]  # each process reads its own row

  np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "single"),
                             rtol=1e-5)
  for expert in ("high_noise", "low_noise"):
    a = load_file(tmp_path / f"single/lora/demo_lora_{expert}.safetensors")
    b = load_file(tmp_path / f"multi/lora/demo_lora_{expert}.safetensors")
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert sorted(p.name for p in (tmp_path / "multi/previews").iterdir()) == [
      "step_000004.txt", "step_000004_0.mp4"]
  assert (tmp_path / "multi/checkpoints/4").is_dir()

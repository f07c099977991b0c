"""What several test modules share: the config loader, the command-line entry points run as a
user runs them, the tiny LoRA step, reading a run's losses and damaging a checkpoint. Test
modules import from here, never from each other."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_config(variant: str = "tiny", file: str = "wan22_masked.py"):
  """A config file's get_config(variant), loaded as launch.py loads it (the tests' one loader)."""
  spec = importlib.util.spec_from_file_location(file.removesuffix(".py"), REPO / "configs" / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def quiet(cfg, steps: int):
  """`cfg` trained for `steps` with no previews and no LoRA files along the way."""
  cfg.train.steps = steps
  cfg.preview.every = 0
  cfg.save.every = 0
  return cfg


def losses(workdir: Path) -> dict[int, float]:
  """step -> loss, as the run wrote them to metrics.jsonl."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows}


def with_devices(xla_flags: str, devices: int) -> str:
  """XLA_FLAGS with N host devices instead of any count already there (other flags kept)."""
  kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def launch(*args: str, devices: int | None = None, cwd: Path = REPO,
           env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
  """`python launch.py ARGS` on the CPU, as a user types it (optionally with N host devices)."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu") | (env or {})
  if devices is not None:
    full_env["XLA_FLAGS"] = with_devices(full_env.get("XLA_FLAGS", ""), devices)
  return subprocess.run([sys.executable, str(REPO / "launch.py"), *map(str, args)],
                        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env)


def sample(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
  """`python sample.py ARGS` on the CPU, as a user types it."""
  return subprocess.run([sys.executable, str(REPO / "sample.py"), *map(str, args)],
                        capture_output=True, text=True, timeout=300, cwd=cwd,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def run_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
  """`python convert/wan22.py ARGS`, the converter's command line."""
  return subprocess.run([sys.executable, str(REPO / "convert" / "wan22.py"), *map(str, args)],
                        capture_output=True, text=True, timeout=600, cwd=cwd)


def tiny_lora_step(tx, b_offset: float = 0.0):
  """(step, trainable, opt_state, frozen, batch) for the tiny model with rank-2 LoRA."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import wan_jax
  from wan_jax.model.lora import FROZEN, LORA, add_lora
  from wan_jax.train.step.mesh import make_mesh
  from wan_jax.train.step.train_step import StepSettings, make_train_step

  model = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  add_lora(model, 2, 2.0, seed=0)
  graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
  trainable = jax.tree.map(lambda x: x + b_offset, trainable)
  opt_state = tx.init(trainable)
  settings = StepSettings(sampling="uniform", shift=1.0, logit_mean=0.0, logit_std=1.0,
                          sample_posterior=False, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)
  step = make_train_step(graphdef, tx, settings, make_mesh(), trainable, opt_state, frozen)
  batch = {"latent_mean": jnp.ones((1, 2, 4, 6, 16)), "latent_logvar": jnp.zeros((1, 2, 4, 6, 16)),
           "weights": jnp.ones((1, 2, 4, 6)), "context": jnp.ones((1, 24, 48)),
           "loss_multiplier": jnp.ones((1,))}
  return step, trainable, opt_state, frozen, batch


def tiny_batch(frames: int = 5, height: int = 6, width: int = 10) -> dict:
  """A step's batch for the tiny model: odd latent frames, H != W, a partial mask and a padded
  prompt."""
  import jax.numpy as jnp
  import numpy as np

  import wan_jax
  rng = np.random.default_rng(0)
  cfg = wan_jax.tiny()
  grid = (2, frames, height, width)
  return {"latent_mean": jnp.asarray(rng.standard_normal((*grid, 16)), jnp.float32),
          "latent_logvar": jnp.full((*grid, 16), -4.0, jnp.float32),
          "weights": jnp.asarray(np.where(rng.random(grid) < 0.5, 1.0, 0.1), jnp.float32),
          "context": jnp.asarray(rng.standard_normal((2, cfg.text_len, cfg.text_dim)) *
                                 (np.arange(cfg.text_len) < 7)[None, :, None], jnp.float32),
          "loss_multiplier": jnp.asarray([1.0, 0.5], jnp.float32)}


def largest_array_file(step_dir: Path) -> Path:
  """The biggest array data file of an Orbax checkpoint folder."""
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def flip_bytes(step_dir: Path) -> None:
  """64 bytes flipped in the middle of a checkpoint's largest array file."""
  path = largest_array_file(step_dir)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  for i in range(middle, middle + 64):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def on_demo_data(cfg, root: Path):
  """`cfg` reading the demo data set generated under root/data (make_demo_dataset) and caching
  under root/cache, so several runs of one test share one data set and its caches."""
  cfg.cache.dir = str(root / "cache")
  cfg.datasets[0].folder_path = str(root / "data/media")
  cfg.datasets[0].mask_path = str(root / "data/masks")
  return cfg


NOISE = ("Traceback", "Event loop is closed", "cannot schedule new futures", "Exception ignored",
         "KeyboardInterrupt")


def assert_quiet(result: subprocess.CompletedProcess, code: int, bars: bool = False) -> None:
  """Exit code `code`, and nothing but our own lines (and progress bars if `bars`): no
  traceback, no library noise."""
  text = result.stdout + result.stderr
  assert result.returncode == code, text[-3000:]
  for noise in NOISE:
    assert noise not in text, text[-3000:]
  if bars:
    return
  for line in filter(None, result.stderr.splitlines()):  # logging's ("WARNING name: ...") or ours
    assert line.startswith(("WARNING ", "launch.py: ", "(--traceback", "SIGTERM: ", "SIGINT: ",
                            "stopped at once ")), text[-3000:]

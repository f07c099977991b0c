"""Train Wan 2.2 A14B (LoRA or full, masked loss) from a config file.

  python launch.py --config configs/wan22_masked.py:tiny          # the demo, CPU, minutes
  python launch.py --config configs/wan22_masked.py --workdir runs/person \
      --config.model.name_or_path=/ckpt/wan22-jax \
      --config.datasets[0].folder_path=/data/person --config.datasets[0].mask_path=/data/masks
  python launch.py ... --cache_only                               # build the caches, then stop

Running again with the same --workdir resumes from its latest checkpoint. On several hosts,
start the same command on every host with JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (or under SLURM / Open MPI, detected by JAX): the run then calls
jax.distributed.initialize() before anything else touches a device.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

# The memory planner sizes the run against the allocator's limit; JAX's default of 75% of the
# card would refuse plans that fit. Set before JAX starts its backend; the user's value wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "wan22_masked.py") + ":tiny"
MULTI_HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _flags(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config file[:variant]",
                                  flag_values=fv, sys_argv=argv, lock_config=False)
  flags.DEFINE_string("workdir", None, "run folder (checkpoints, LoRA files, previews, logs); "
                      "default runs/demo for the tiny demo", flag_values=fv)
  flags.DEFINE_bool("cache_only", False, "build the latent and prompt caches, then stop",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "show progress bars", flag_values=fv)
  flags.DEFINE_bool("traceback", False, "show the full traceback of a configuration or data "
                    "error instead of one line", flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    print(fv.get_help())
    print("\nEvery key of the config file is a flag too: --config.<key>=<value> (see "
          "docs/training.md).")
    raise SystemExit(0)
  fv(argv)
  return fv


def _distributed() -> None:
  """Multi-host start-up when the environment asks for it (one process per host)."""
  import jax
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):  # explicit: address, process count and this one's id
    count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)
  elif any(int(env.get(v, "1") or 1) > 1 for v in MULTI_HOST_ENV[1:]):  # SLURM / Open MPI
    jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
  argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    fv = _flags(argv)
  except flags.Error as e:
    print(f"launch.py: {e}", file=sys.stderr)
    return 2
  cfg = fv.config
  workdir = fv.workdir or ("runs/demo" if cfg.model.arch == "tiny" else None)
  if workdir is None:
    print("launch.py: --workdir is required (checkpoints, LoRA files and previews go there)",
          file=sys.stderr)
    return 2
  _distributed()
  from wan_jax.train.trainer import train  # after distributed start-up: jax sees every host
  try:
    train(cfg, workdir, cache_only=fv.cache_only, progress=fv.progress)
  except (ValueError, FileNotFoundError) as e:  # config and data problems: one clear line
    if fv.traceback:
      raise
    print(f"launch.py: {type(e).__name__}: {e}\n(--traceback shows where it came from)",
          file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

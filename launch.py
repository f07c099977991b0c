"""Train Wan 2.2 A14B (LoRA or full, masked loss) from a config file.

  python launch.py --config configs/wan22_masked.py:tiny          # the demo, CPU, minutes
  python launch.py --config configs/wan22_masked.py --workdir runs/person \
      --config.model.name_or_path=/ckpt/wan22-jax \
      --config.datasets[0].folder_path=/data/person --config.datasets[0].mask_path=/data/masks
  python launch.py ... --cache_only                               # build the caches, then stop
  python launch.py --config job.yaml                              # an ai-toolkit Wan 2.2 job
  python launch.py --config job.yaml --print_config               # what it became, as JSON

A .yaml/.yml --config is an ai-toolkit job file (docs/from_ai_toolkit.md): it is mapped onto
configs/wan22_masked.py (configs/wan22_i2v_masked.py for arch wan22_14b_i2v), what is not used
is listed at start-up, and --config.<key>=<value> overrides still apply on top; its
training_folder/name is the default --workdir.

Running again with the same --workdir resumes from its latest checkpoint. On several hosts,
start the same command on every host with JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (or under SLURM / Open MPI, detected by JAX): the run then calls
jax.distributed.initialize() before anything else touches a device.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from wan_jax.config_file import load_config_file
from wan_jax.data.config import validate as validate_dataset
from wan_jax.files import storage_error
from wan_jax.jobs.ai_toolkit import Job, JobError, is_job_file, load_job
from wan_jax.jobs.overrides import OverrideError, apply_lists, split_overrides
from wan_jax.variants import VARIANTS

# The memory planner sizes the run against the allocator's limit; JAX's default of 75% of the
# card would refuse plans that fit. Set before JAX starts its backend; the user's value wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

CONFIG_FILE = str(Path(__file__).parent / "configs" / "wan22_masked.py")
DEFAULT_CONFIG = CONFIG_FILE + ":tiny"
MULTI_HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
  """The value of --config (None if not given) and argv without it."""
  for i, arg in enumerate(argv[1:], 1):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1], argv[:i] + argv[i + 2:]
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
  return None, argv


def _python_config(config_file: str) -> ml_collections.ConfigDict:
  """A model variant's config ("configs/wan22_masked.py:tiny", relative to this folder): the
  base a job file is mapped onto."""
  return load_config_file(str(Path(__file__).parent / config_file))


def _base_config(path: str) -> ml_collections.ConfigDict | None:
  """The Python config before overrides, to check them against; None if it does not load (absl
  then reports why when it loads the file itself)."""
  try:
    return load_config_file(path)
  except Exception:  # noqa: BLE001 - any failure is absl's to report, with its own message
    return None


def _flags(argv: list[str]) -> tuple[flags.FlagValues, Job | None]:
  fv = flags.FlagValues()
  path, rest = _config_arg(argv)
  job = None
  if path is not None and is_job_file(path):  # an ai-toolkit job: mapped, then overridable
    job = load_job(path, _python_config)
    argv, lists = split_overrides(job.config, rest)
    config_flags.DEFINE_config_dict("config", job.config, "the mapped job file", flag_values=fv,
                                    sys_argv=argv, lock_config=False)
  else:
    file = (path or DEFAULT_CONFIG).partition(":")[0]
    if not Path(file).is_file():
      raise flags.IllegalFlagValueError(f"--config {path}: {file} is not a file (a Python "
                                        "config such as configs/wan22_masked.py, or a .yaml job)")
    base = _base_config(path or DEFAULT_CONFIG)
    argv, lists = split_overrides(base, argv) if base is not None else (argv, {})
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config file[:variant], or an "
                                    "ai-toolkit job (.yaml)", flag_values=fv, sys_argv=argv,
                                    lock_config=False)
  flags.DEFINE_string("workdir", None, "run folder (checkpoints, LoRA files, previews, logs); "
                      "default: a tiny demo's own folder (runs/demo, runs/demo_i2v, ...)",
                      flag_values=fv)
  flags.DEFINE_bool("cache_only", False, "build the latent and prompt caches, then stop",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "show progress bars", flag_values=fv)
  flags.DEFINE_bool("traceback", False, "show the full traceback of a configuration or data "
                    "error instead of one line", flag_values=fv)
  flags.DEFINE_bool("print_config", False, "print the resolved config as JSON and exit",
                    flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    print(fv.get_help())
    print("\nEvery key of the config file is a flag too: --config.<key>=<value> (see "
          "docs/training.md).")
    raise SystemExit(0)
  fv(argv)
  apply_lists(fv.config, lists)  # list-valued keys, which absl cannot override
  return fv, job


def _plain(value):
  """The config as JSON data (to_dict() leaves the ConfigDicts inside `datasets` as they are)."""
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


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


class _ReportedInOneLine(logging.Filter):
  """Orbax logs a failed background save with its traceback, from each of its threads (hundreds
  of lines on a full disk), then raises the same error to the trainer, which reports a full or
  read-only disk in one line (wan_jax.files.WriteFailed): the logged copies of such an error are
  dropped. Every other record passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is None or storage_error(error) is None


def main(argv: list[str] | None = None) -> int:
  argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _ReportedInOneLine) for f in handler.filters):
      handler.addFilter(_ReportedInOneLine())
  try:
    fv, job = _flags(argv)
  except (flags.Error, JobError, OverrideError) as e:
    print(f"launch.py: {e}", file=sys.stderr)
    return 2
  cfg = fv.config
  if job is not None:  # notices and unused keys, once; out of the way of --print_config's JSON
    print(job.report(_config_arg(argv)[0]), file=sys.stderr if fv.print_config else sys.stdout)
  if fv.print_config:
    print(json.dumps(_plain(cfg), indent=2, default=str))
    return 0
  try:  # values absl lets through as text (resolution=abc): one line now, not minutes in
    for i, ds in enumerate(cfg.datasets):
      validate_dataset(ds, f"datasets[{i}]")
  except ValueError as e:
    print(f"launch.py: {e}", file=sys.stderr)
    return 2
  demo = VARIANTS[cfg.model.arch].demo_workdir if cfg.model.arch in VARIANTS else ""
  default = job.workdir if job is not None else (demo or None)
  workdir = fv.workdir or default
  if workdir is None:
    print("launch.py: --workdir is required (checkpoints, LoRA files and previews go there)",
          file=sys.stderr)
    return 2
  _distributed()
  from wan_jax.files import WriteFailed
  from wan_jax.train.run.trainer import Interrupted, train  # after distributed start-up
  try:
    train(cfg, workdir, cache_only=fv.cache_only, progress=fv.progress)
  except Interrupted as e:  # SIGTERM / Ctrl-C: saved (or said why not); the same command resumes
    print(f"launch.py: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  except WriteFailed as e:  # a full or read-only disk: what and where; the next run resumes
    if fv.traceback:
      raise
    print(f"launch.py: {e}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError) as e:  # config and data problems: one clear line
    if fv.traceback:
      raise
    print(f"launch.py: {type(e).__name__}: {e}\n(--traceback shows where it came from)",
          file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # Ctrl-C before the run started (or after it ended): nothing to save
    print("launch.py: interrupted", file=sys.stderr)
    sys.exit(130)

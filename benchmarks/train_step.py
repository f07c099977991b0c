"""One LoRA training step of a Wan expert: compile time, step time, model FLOPs, MFU, memory.

The figure users compare: a real-size 14B expert with random bf16 weights, LoRA (rank 32 by
default) on the ten block linears, gradient checkpointing, masked loss, batch 1, at
  a) 480x832x81 (32,760 tokens)   b) 720x1280x81 (75,600)   c) a 1024x1024 image (4,096).
MFU is against the rate of a large matmul in the compute dtype measured in the same run. With
--torch the PyTorch peer (benchmarks/torch_reference.py: diffusers + peft) runs the same batches
in the same process first (it frees the device before JAX starts) and the table shows ours/theirs.

  python benchmarks/train_step.py --cases a c --out $OUT/train_step.json     # a GPU
  python benchmarks/train_step.py --reduced --torch                           # CPU guard

--reduced is the tiny config (fp32) at small shapes; it runs on a CPU in seconds. Prints a
table last and writes JSON (--out; else one JSON line before the table). Times are figures,
never assertions.

Each step time is one call of the compiled step with a device sync; the first call is reported
apart (first_step_s), then --warmup untimed calls, then the median of --steps. Peak memory is
the device allocator's peak for the whole process so far: run one case per process for a
per-case figure. Weights are random draws in their final dtype, one layer at a time, so a 14B
expert never exists in fp32. The PyTorch side checkpoints every block whatever --plan says
(diffusers has one policy), and none with --plan none. --plan auto runs the trainer's memory
planner per case (wan_jax/train/step/memory_plan.py): the plan line is printed and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import wan_jax
from wan_jax.model.attention import resolve_impl
from wan_jax.model.remat import REMAT_PLANS
from wan_jax.model.layers import matmul_precision
from wan_jax.model.vae_config import VAEConfig, wan21_vae
import flops
from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.train.step.mesh import make_mesh
from wan_jax.train.step.optimizer import make_optimizer
from wan_jax.train.step import memory_plan
from wan_jax.train.run.random_weights import random_state
from wan_jax.train.step.sharding import global_batch_from_local, streamed, tree_shardings
from wan_jax.train.step.train_step import StepSettings, make_train_step, step_keys
from wan_jax.variants import Variant, get_variant, tiny_twin

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling scripts: forward (commit, memory), torch_reference
  sys.path.insert(0, str(HERE))
from forward import commit, peak_memory_gib  # noqa: E402
# name: (label, frames, height, width); the reduced shapes keep the cases' character (a long
# clip, a longer one, an image) at a size a CPU runs in seconds.
CASES = {"a": ("480x832x81", 81, 480, 832), "b": ("720x1280x81", 81, 720, 1280),
         "c": ("1024x1024 image", 1, 1024, 1024), "d": ("704x1280x121", 121, 704, 1280)}
REDUCED_CASES = {"a": ("96x160x17", 17, 96, 160), "b": ("144x256x17", 17, 144, 256),
                 "c": ("128x128 image", 1, 128, 128), "d": ("128x192x25", 25, 128, 192)}
# Variants whose step reads latents and a prompt only (an I2V condition is not generated here).
ARCHS = ("wan22_t2v_a14b", "wan22_ti2v_5b")
T_RANGE = (0.0, 875.0)  # the low-noise expert's timesteps (either expert costs the same)
GIB = 2**30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="wan22_t2v_a14b", choices=ARCHS,
                 help="the model variant (wan_jax/variants.py); with --reduced its tiny twin. "
                      "The TI2V-5B step trains half its rows image-to-video (ti2v.i2v_prob)")
  p.add_argument("--cases", nargs="+", default=["a", "b", "c"], choices=sorted(CASES),
                 help="d (704x1280x121) is the TI2V-5B's native size")
  p.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
  p.add_argument("--plan", "--remat", dest="plan", default="full",
                 choices=("auto", *REMAT_PLANS),
                 help="checkpointing plan, or auto: the trainer's memory planner picks the "
                      "fastest that fits (with --resident-experts 2 it may move the idle expert "
                      "to host memory); --remat is the older name")
  p.add_argument("--device-memory-gib", type=float, default=0.0,
                 help="with --plan auto: plan for this much device memory (e.g. 79 for an H100)")
  p.add_argument("--stream-weights", default="false", choices=("auto", "true", "false"),
                 help="the frozen block weights in pinned host memory, fetched block by block "
                      "inside the step (true); auto: the planner decides (with --plan auto). "
                      "Unless false, the weights are drawn straight into host memory, so a "
                      "simulated small card never holds a whole expert")
  p.add_argument("--memory-margin", type=float, default=0.05)
  p.add_argument("--quantize", default="none", choices=("none", "fp8"),
                 help="fp8: the block kernels stored as float8_e4m3fn with scales (random fp8 "
                      "values, model.quantize)")
  p.add_argument("--attention", default="auto", choices=("auto", "cudnn", "xla", "chunked"))
  p.add_argument("--rank", type=int, default=32)
  p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
  p.add_argument("--layers", type=int, default=None, help="override the number of blocks")
  p.add_argument("--resident-experts", type=int, default=1, choices=(1, 2),
                 help="2: a second expert's weights and optimizer state stay on the device, "
                      "idle (the trainer's memory with both experts)")
  p.add_argument("--reduced", action="store_true", help="tiny config, small shapes (CPU)")
  p.add_argument("--torch", action="store_true", help="also time the diffusers + peft peer")
  p.add_argument("--peak-size", type=int, default=None,
                 help="matmul size for the peak rate (default 8192, 512 with --reduced)")
  p.add_argument("--threads", type=int, default=None,
                 help="CPU threads for both frameworks (default 1 with --reduced: on a shared "
                      "box PyTorch's OpenMP pool stalls when a core is taken; else unchanged)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="write the JSON report here")
  args = p.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  if args.threads is None and args.reduced:
    args.threads = 1
  args.alpha = float(args.rank if args.alpha is None else args.alpha)
  args.variant = tiny_twin(get_variant(args.arch)) if args.reduced else get_variant(args.arch)
  if args.torch and args.variant.task != "t2v":
    p.error("--torch times the A14B text-to-video peer only")
  return args


def limit_cpu_threads(threads: int | None) -> None:
  """One thread for XLA's CPU backend (read when the backend starts, so a no-op once JAX has
  run in this process); PyTorch's CPU pool is set in run_theirs."""
  if threads == 1:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def git(*cmd: str) -> str:
  try:
    return subprocess.run(["git", *cmd], cwd=HERE.parent, capture_output=True, text=True,
                          check=False).stdout.strip()
  except OSError:
    return ""


def model_config(args: argparse.Namespace) -> wan_jax.WanConfig:
  runtime: dict[str, Any] = {"attention": args.attention, "quantize": args.quantize,
                             "remat": "full" if args.plan == "auto" else args.plan}
  if args.layers is not None:
    runtime["num_layers"] = args.layers
  if args.reduced:
    return args.variant.transformer(**runtime)  # fp32: a CPU has no fast bf16 matmul
  return args.variant.transformer(param_dtype="bfloat16", compute_dtype="bfloat16", **runtime)


def make_batch(cfg: wan_jax.WanConfig, grid: tuple[int, int, int], seed: int,
               vae: VAEConfig) -> dict[str, np.ndarray]:
  """Random latents around the VAE's statistics, a binary-ish mask (1 / 0.1), full text rows."""
  rng = np.random.default_rng(seed)
  shape = (1, *grid, vae.z_dim)
  mean = (rng.standard_normal(shape) * np.asarray(vae.latents_std)
          + np.asarray(vae.latents_mean))
  return {
      "latent_mean": mean.astype(np.float32),
      "latent_logvar": (rng.standard_normal(shape) * 0.5 - 6.0).astype(np.float32),
      "weights": np.where(rng.random((1, *grid)) < 0.6, 1.0, 0.1).astype(np.float32),
      "context": rng.standard_normal((1, cfg.text_len, cfg.text_dim)).astype(np.float32),
      "loss_multiplier": np.ones((1,), np.float32),
  }


def peak_matmul(dtype: str, size: int, *, batch: int = 4, reps: int = 10) -> float:
  """FLOP/s of a batched [size, size] matmul on random data (several operand sets, so a cache
  holds none of them), the median of `reps` calls after a warm-up."""
  dt = jnp.dtype(dtype)
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (batch, size, size), jnp.float32).astype(dt)
  b = jax.random.normal(kb, (batch, size, size), jnp.float32).astype(dt)
  fn = jax.jit(lambda a, b: jnp.einsum("kij,kjl->kil", a, b, precision=matmul_precision(dt)))
  for _ in range(2):
    jax.block_until_ready(fn(a, b))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(a, b))
    times.append(time.perf_counter() - start)
  return 2 * batch * size**3 / statistics.median(times)


def build_state(cfg: wan_jax.WanConfig, rank: int, alpha: float, tx, mesh, seed: int,
                host: bool = False):
  """(graphdef, trainable, frozen, opt_state): the model's structure from nnx.eval_shape (no
  weights), then random weights drawn directly in their dtype and sharding on the device (with
  `host`, the frozen block weights straight into pinned host memory)."""
  def build() -> wan_jax.WanTransformer:
    model = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(seed))
    add_lora(model, rank, alpha, seed=seed)
    return model

  graphdef, trainable_shape, frozen_shape = nnx.split(nnx.eval_shape(build), LORA, FROZEN)
  key_trainable, key_frozen = jax.random.split(jax.random.key(seed))
  trainable = random_state(trainable_shape, key_trainable, tree_shardings(trainable_shape, mesh))
  frozen_sh = tree_shardings(frozen_shape, mesh)
  frozen = random_state(frozen_shape, key_frozen, streamed(frozen_sh) if host else frozen_sh)
  opt_shapes = jax.eval_shape(tx.init, trainable)
  opt_state = jax.jit(tx.init, out_shardings=tree_shardings(opt_shapes, mesh))(trainable)
  return graphdef, trainable, frozen, opt_state


def optimizer_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "learning_rate": 1e-4, "lr_schedule": "constant", "warmup_steps": 0, "steps": 1000,
      "grad_accum": 1, "weight_decay": 0.0, "max_grad_norm": 1.0})


def step_settings(variant: Variant) -> StepSettings:
  vae = variant.vae()
  return StepSettings(sampling="shift", shift=5.0, logit_mean=0.0, logit_std=1.0,
                      sample_posterior=True, latents_mean=tuple(vae.latents_mean),
                      latents_std=tuple(vae.latents_std), task=variant.task_object)


def progress(side: str, case: str, r: dict[str, Any]) -> None:
  """One line per finished case, so a run cut short by a time limit still shows its figures."""
  peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
  compile_s = f"compile {r['compile_s']:.1f} s, " if "compile_s" in r else ""
  print(f"{side} {case}: {compile_s}first step {r['first_step_s']:.3f} s, median "
        f"{r['median_s']:.3f} s of {len(r['step_s'])}, peak {peak} GiB, loss {r['loss']:.4f}",
        flush=True)


class Steps:
  """The compiled step of each checkpointing plan for one case (the state is the same for all:
  the plan lives in the graph, not in the weights)."""

  def __init__(self, cfg: wan_jax.WanConfig, args, tx, mesh, state: list, batch, key, t):
    self.cfg, self.args, self.tx, self.mesh = cfg, args, tx, mesh
    abstract = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
    # Lowered against shapes: the frozen weights may sit on the device or in host memory now.
    self.state = [abstract(x, tree_shardings(x, mesh)) for x in state]
    self.frozen_streamed = abstract(state[2], streamed(tree_shardings(state[2], mesh)))
    self.rest = (batch, key, *t)
    self.compiled: dict[tuple[str, bool], Any] = {}
    self.compile_s: dict[str, float] = {}

  def get(self, remat: str, stream: bool = False) -> Any:
    if (remat, stream) not in self.compiled:
      cfg = self.cfg.replace(remat=remat)

      def build() -> wan_jax.WanTransformer:
        model = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
        add_lora(model, self.args.rank, self.args.alpha)
        return model

      graphdef = nnx.split(nnx.eval_shape(build), LORA, FROZEN)[0]
      trainable, opt_state, frozen = self.state
      step_fn = make_train_step(graphdef, self.tx, step_settings(self.args.variant), self.mesh,
                                trainable, opt_state, frozen, stream=stream)
      start = time.perf_counter()
      frozen = self.frozen_streamed if stream else frozen
      self.compiled[remat, stream] = step_fn.lower(trainable, opt_state, frozen,
                                                   *self.rest).compile()
      self.compile_s[remat + (", streamed" if stream else "")] = time.perf_counter() - start
    return self.compiled[remat, stream]


def choose_plan(steps: Steps, args, idle: list | None) -> memory_plan.Plan:
  """--plan auto: the trainer's planner over this case; else the named plan, unchecked."""
  two = idle is not None
  stream = {"auto": None, "true": True, "false": False}[args.stream_weights]
  if args.plan != "auto":
    return memory_plan.Plan(memory_plan.Candidate(args.plan, bool(stream) and two, bool(stream)),
                            None, [], None, "named by --plan", two, "")
  usable, source = memory_plan.usable_memory(args.device_memory_gib, args.memory_margin,
                                             "--device-memory-gib")
  resident = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                            sharding=x.sharding.with_memory_kind("device"))
  idle_bytes = memory_plan.device_bytes(jax.tree.map(resident, idle)) if two else 0
  return memory_plan.choose(
      memory_plan.candidates(two, stream=stream),
      lambda r, s: memory_plan.StepMemory.of(
          steps.get(r, s), memory_plan.device_bytes(steps.frozen_streamed, "pinned_host") if s
          else 0), idle_bytes,
      usable, capacity_source=source, two_experts=two, bucket="this case")


def to_memory(tree: Any, kind: str) -> Any:
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding.with_memory_kind(kind)), tree)


def placed(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(jax.device_put, tree, shardings)


def run_ours(cfg, tx, state: list, idle: list | None, case: dict, mesh, args) -> dict[str, Any]:
  """Plans (or takes the named plan), compiles for this case, runs 1 + warmup steps, then
  times `steps` with a device sync."""
  device_batch = global_batch_from_local(case["batch"], mesh)
  t_low, t_high = jnp.float32(T_RANGE[0]), jnp.float32(T_RANGE[1])
  total = 1 + args.warmup + args.steps
  keys = [step_keys(args.seed, i) for i in range(total)]
  steps = Steps(cfg, args, tx, mesh, state, device_batch, keys[0], (t_low, t_high))
  plan = choose_plan(steps, args, idle)
  print(plan.line(), flush=True)
  if idle is not None:  # where the plan keeps the idle expert (it stays there for later cases)
    idle[:] = to_memory(idle, "pinned_host" if plan.chosen.offload_expert else "device")
  compiled = steps.get(plan.chosen.remat, plan.chosen.stream)
  mem = compiled.memory_analysis()
  trainable, opt_state, frozen = state
  frozen_sh = tree_shardings(frozen, mesh)  # resident, or the blocks in host memory
  frozen = placed(frozen, streamed(frozen_sh) if plan.chosen.stream else frozen_sh)
  times, metrics = [], None
  for i in range(total):
    start = time.perf_counter()
    trainable, opt_state, metrics = compiled(trainable, opt_state, frozen, device_batch,
                                             keys[i], t_low, t_high)
    jax.block_until_ready((trainable, opt_state, metrics))
    times.append(time.perf_counter() - start)
  state[:] = [trainable, opt_state, frozen]  # the old buffers were donated
  timed = times[1 + args.warmup:]
  return {
      "plan": plan.chosen.remat, "idle_expert_offloaded": plan.chosen.offload_expert,
      "weights_streamed": plan.chosen.stream,
      "plan_line": plan.line(),
      "compile_s": steps.compile_s[plan.chosen.remat + (", streamed" if plan.chosen.stream
                                                        else "")],
      "compile_s_all_plans": steps.compile_s,
      "predicted_peak_gib": None if plan.estimate is None else plan.estimate.total / GIB,
      "first_step_s": times[0], "step_s": timed,
      "median_s": statistics.median(timed), "peak_memory_gib": peak_memory_gib(),
      "compiled_temp_gib": None if mem is None else mem.temp_size_in_bytes / GIB,
      "compiled_argument_gib": None if mem is None else mem.argument_size_in_bytes / GIB,
      "compiled_host_argument_gib": None if mem is None else getattr(
          mem, "host_argument_size_in_bytes", 0) / GIB,
      "loss": float(metrics["loss"]), "finite": bool(metrics["finite"]),
  }


def run_theirs(cfg, args, cases: dict[str, dict]) -> dict[str, dict]:
  """The diffusers + peft step for every case; frees the device afterwards."""
  import torch
  import torch_reference as ref

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu" and args.threads:
    torch.set_num_threads(args.threads)
  dtype = getattr(torch, cfg.param_dtype)
  start = time.perf_counter()
  model, params = ref.build_model(cfg, rank=args.rank, alpha=args.alpha, dtype=dtype,
                                  device=device, checkpointing=args.plan != "none",
                                  seed=args.seed)
  out = {"build_s": time.perf_counter() - start, "device": str(device), "cases": {},
         "threads": torch.get_num_threads() if device.type == "cpu" else None, **ref.versions()}
  vae = wan21_vae()
  for name, case in cases.items():
    step = ref.Step(model, params, case["batch"], dtype=dtype,
                    latents_mean=tuple(vae.latents_mean), latents_std=tuple(vae.latents_std),
                    t_range=T_RANGE, seed=args.seed)
    out["cases"][name] = ref.time_steps(step, steps=args.steps, warmup=args.warmup)
    progress("torch", case["label"], out["cases"][name])
    del step
    ref.release()
  del model, params
  ref.release()
  return out


def summarise(report: dict[str, Any]) -> str:
  """The table printed last (the device tool returns the end of the output)."""
  peak = report["peak_flops_per_s"]
  unit, scale = ("GFLOP", 1e9) if report["config"]["reduced"] else ("PFLOP", 1e15)
  head = (f"{'case':<18}{'tokens':>8}{unit:>8}{'compile s':>11}{'step s':>9}{'MFU':>7}"
          f"{'tok/s':>9}{'peak GiB':>10}")
  torch_on = any("torch" in c for c in report["cases"])
  if torch_on:
    head += f"{'torch s':>9}{'torch MFU':>11}{'ours/torch':>12}"
  cfg = report["config"]
  title = (f"{report['device_kind']} ({report['backend']}), peak {peak / 1e12:.1f} TFLOP/s "
           f"{cfg['dtype']}; commit {report['commit']}{' (dirty)' if report['dirty'] else ''}; "
           f"{cfg['layers']} layers, plan {cfg['plan']}, attention {cfg['attention_resolved']}, "
           f"rank {cfg['rank']}, experts resident {cfg['resident_experts']}")
  lines = [title, head + "  plan"]
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  for c in report["cases"]:
    o = c["ours"]
    row = (f"{c['label']:<18}{c['tokens']:>8}{c['model_flops'] / scale:>8.3f}"
           f"{o['compile_s']:>11.1f}{o['median_s']:>9.3f}{o['mfu']:>7.1%}"
           f"{o['tokens_per_s']:>9.0f}{fmt(o['peak_memory_gib'], '>10.1f'):>10}")
    if torch_on:
      t = c.get("torch", {})
      row += (f"{fmt(t.get('median_s'), '>9.3f'):>9}{fmt(t.get('mfu'), '>11.1%'):>11}"
              f"{fmt(c.get('ratio_ours_over_torch'), '>12.2f'):>12}")
    row += f"  {o['plan']}{' (idle expert in host memory)' if o['idle_expert_offloaded'] else ''}"
    row += " (weights streamed)" if o.get("weights_streamed") else ""
    lines.append(row)
  return "\n".join(lines)


def prepare_cases(cfg: wan_jax.WanConfig, args: argparse.Namespace) -> dict[str, dict]:
  """Each case's shape, tokens, model FLOPs and (host) batch, shared by both frameworks."""
  table = REDUCED_CASES if args.reduced else CASES
  cases = {}
  for name in dict.fromkeys(args.cases):
    label, frames, height, width = table[name]
    geometry = args.variant.geometry
    tokens = flops.token_count(cfg, frames, height, width, geometry)
    cases[name] = {"case": name, "label": label, "frames": frames, "height": height,
                   "width": width, "tokens": tokens,  # (the TI2V's timesteps: per frame, not
                   "model_flops": flops.step_flops(cfg, tokens, lora=True).step,  # per token)
                   "batch": make_batch(cfg, flops.latent_grid(frames, height, width, geometry),
                                       args.seed, args.variant.vae())}
  return cases


def run_jax(cfg: wan_jax.WanConfig, args: argparse.Namespace, cases: dict[str, dict],
            peak_size: int) -> dict[str, Any]:
  """Peak matmul rate, the state (with --resident-experts 2 a second, idle expert beside it, as
  the trainer holds both), then every case's step."""
  mesh = make_mesh(devices=jax.devices()[:1])  # one device, batch 1
  out: dict[str, Any] = {"peak_flops_per_s": peak_matmul(cfg.compute_dtype, peak_size)}
  tx = make_optimizer(optimizer_config())
  start = time.perf_counter()
  host = args.stream_weights != "false"  # never a whole expert on a simulated small card
  experts = [build_state(cfg, args.rank, args.alpha, tx, mesh, args.seed + i, host)
             for i in range(args.resident_experts)]
  jax.block_until_ready([e[1:] for e in experts])
  out["build_s"] = time.perf_counter() - start
  stats = jax.devices()[0].memory_stats() or {}
  out["resident_gib"] = stats["bytes_in_use"] / GIB if "bytes_in_use" in stats else None
  _, trainable, frozen, opt_state = experts[0]
  state = [trainable, opt_state, frozen]
  idle = list(experts[1][1:]) if len(experts) == 2 else None  # trainable, frozen, opt_state
  del trainable, opt_state, frozen, experts[:]
  out["cases"] = {}
  for name, case in cases.items():
    out["cases"][name] = run_ours(cfg, tx, state, idle, case, mesh, args)
    progress("ours", case["label"], out["cases"][name])
  return out


def add_rates(side: dict[str, Any], case: dict[str, Any], peak: float) -> dict[str, Any]:
  side["mfu"] = flops.mfu(case["model_flops"], side["median_s"], peak)
  side["tokens_per_s"] = case["tokens"] / side["median_s"]
  return side


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.torch:  # both frameworks share the device: JAX must not take 75% of it up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  limit_cpu_threads(args.threads)
  cfg = model_config(args)
  cases = prepare_cases(cfg, args)
  with_batches = dict(cases)
  cases = {name: {k: v for k, v in c.items() if k != "batch"} for name, c in cases.items()}
  theirs = run_theirs(cfg, args, with_batches) if args.torch else None  # first: frees the device
  peak_size = args.peak_size or (512 if args.reduced else 8192)
  ours = run_jax(cfg, args, with_batches, peak_size)
  peak = ours["peak_flops_per_s"]
  for name, case in cases.items():
    case["ours"] = add_rates(ours["cases"][name], case, peak)
    if theirs is not None:
      case["torch"] = add_rates(theirs["cases"][name], case, peak)
      case["ratio_ours_over_torch"] = case["ours"]["median_s"] / case["torch"]["median_s"]

  device = jax.devices()[0]
  command = ["python", "benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)]
  report = {
      "benchmark": "train_step", "commit": commit(),
      "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
      "jax_version": jax.__version__, "backend": jax.default_backend(),
      "device_kind": device.device_kind, "peak_flops_per_s": peak, "peak_matmul_size": peak_size,
      "config": {"arch": args.variant.arch, "reduced": args.reduced, "layers": cfg.num_layers,
                 "dim": cfg.dim, "dtype": cfg.compute_dtype, "rank": args.rank,
                 "alpha": args.alpha, "plan": args.plan, "attention": cfg.attention,
                 "attention_resolved": resolve_impl(cfg.attention, jnp.dtype(cfg.compute_dtype)),
                 "batch": 1, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                 "resident_experts": args.resident_experts,
                 "stream_weights": args.stream_weights, "quantize": args.quantize,
                 "command": " ".join(command)},
      "build_s": ours["build_s"], "resident_gib": ours["resident_gib"],
      "cases": list(cases.values()),
  }
  if theirs is not None:
    report["torch"] = {k: v for k, v in theirs.items() if k != "cases"}
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2))
  else:
    print(json.dumps(report))
  print(summarise(report), flush=True)
  return report


if __name__ == "__main__":
  main()

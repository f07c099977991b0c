"""Checkpointing plans and the memory planner.

Every plan must compute the same step (losses and gradients equal to `full`'s); the planner must
take the fastest plan that fits, move the idle expert or the residual stream off the device only
when it has to, and refuse a run that cannot fit before any weights load, saying what would fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wan_jax
from wan_jax.model.remat import REMAT_PLANS, is_self_attention_kernel
from wan_jax.model.vae_config import tiny_vae
from wan_jax.train.step import memory_plan
from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.train.step.memory_plan import GIB, Candidate, DoesNotFit, StepMemory
from wan_jax.train.step.train_step import StepSettings, loss_and_grads, step_keys

from helpers import tiny_batch

PLANS = [p for p in REMAT_PLANS if p != "full"]


def step_result(plan: str) -> tuple[float, list[np.ndarray]]:
  model = wan_jax.WanTransformer(wan_jax.tiny(remat=plan, num_layers=3), rngs=nnx.Rngs(0))
  add_lora(model, 4, 8.0, seed=0)
  graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
  vae = tiny_vae()
  settings = StepSettings(sampling="uniform", shift=1.0, logit_mean=0.0, logit_std=1.0,
                          sample_posterior=True, latents_mean=tuple(vae.latents_mean),
                          latents_std=tuple(vae.latents_std))
  fn = jax.jit(lambda tr, fr, b, k: loss_and_grads(graphdef, tr, fr, b, k, jnp.float32(0.0),
                                                   jnp.float32(1000.0), settings))
  loss, _, grads = fn(trainable, frozen, tiny_batch(), step_keys(0, 3))
  return float(loss), [np.asarray(g) for g in jax.tree.leaves(grads)]


@pytest.fixture(scope="module")
def full_result():
  return step_result("full")


@pytest.mark.slow
@pytest.mark.parametrize("plan", PLANS)
def test_every_plan_computes_the_same_step(plan, full_result):
  loss, grads = step_result(plan)
  want_loss, want_grads = full_result
  assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7)
  assert len(grads) == len(want_grads) and any(np.abs(g).max() > 0 for g in grads)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_only_self_attention_kernels_are_kept():
  """save_attention keeps the cuDNN forward's outputs of self-attention (keys as long as the
  queries), not of cross-attention (512 prompt rows) nor anything else."""
  class Prim:
    def __init__(self, name):
      self.name = name

  q = jax.ShapeDtypeStruct((1, 32760, 40, 128), jnp.bfloat16)
  ctx = jax.ShapeDtypeStruct((1, 512, 40, 128), jnp.bfloat16)
  fwd = Prim("dot_product_attention_fwd_wrapper")
  assert is_self_attention_kernel(fwd, q, q, q)
  assert not is_self_attention_kernel(fwd, q, ctx, ctx)
  assert not is_self_attention_kernel(Prim("dot_product_attention_bwd_wrapper"), q, q, q)
  assert not is_self_attention_kernel(Prim("dot_general"), q, q)


@pytest.mark.slow
def test_offload_plans_on_the_cpu_keep_the_residuals_in_the_same_memory():
  """The CPU has no separate pinned host memory: an offload plan compiles and runs (same
  numbers, above) and its device figure equals the plan without offloading."""
  def memory(plan):
    model = wan_jax.WanTransformer(wan_jax.tiny(remat=plan), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jnp.ones((1, 5, 6, 10, 16))
    f = jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(x, jnp.array([10.0]),
                                                                      jnp.ones((1, 7, 48))))))
    return StepMemory.of(f.lower(state).compile())

  assert memory("offload_residual") == memory("full")
  assert memory("save_attention+offload_residual") == memory("save_attention")
  assert memory("save_attention").peak > memory("full").peak  # the kept attention outputs


# Figures shaped like the measured 720p x 81 step on one H200 (docs/performance.md): weights
# 26.6 GiB per expert; temporaries 85.8 GiB with full checkpointing, of which 57.7 GiB is the
# saved residual stream, plus 31 GiB of attention outputs when they are kept.
G = GIB
STEP_720P = {
    "save_attention": StepMemory(int(145.2 * G), int(28.4 * G)),
    "full": StepMemory(int(114.2 * G), int(28.4 * G)),
    "save_attention+offload_residual": StepMemory(int(87.5 * G), int(28.4 * G)),
    "offload_residual": StepMemory(int(56.5 * G), int(28.4 * G)),
}
IDLE = int(28.0 * G)


def plan_for(usable_gib: float, steps=STEP_720P, streamed=None, **fixed):
  """The plan for `usable_gib`; `streamed` holds the streamed steps' figures (default: the
  resident ones, so streaming never helps)."""
  compiled = []

  def step_of(remat, stream):
    compiled.append(remat + (" streamed" if stream else ""))
    return (streamed or steps)[remat] if stream else steps[remat]

  plan = memory_plan.choose(memory_plan.candidates(True, **fixed), step_of, IDLE,
                            int(usable_gib * G), capacity_source="test", bucket="81x720x1280")
  return plan, compiled


def test_planner_takes_the_fastest_plan_that_fits():
  plan, compiled = plan_for(200)  # roomy: both experts resident, attention kept
  assert plan.chosen == Candidate("save_attention", False) and compiled == ["save_attention"]
  assert plan.rejected == []

  plan, _ = plan_for(150)  # full checkpointing fits with both experts resident
  assert plan.chosen == Candidate("full", False)

  plan, compiled = plan_for(132)  # an H200: the residual stream goes to the host, experts stay
  assert plan.chosen == Candidate("save_attention+offload_residual", False)
  assert plan.estimate.total == STEP_720P["save_attention+offload_residual"].peak + IDLE
  assert [e.candidate.remat for e in plan.rejected] == ["save_attention", "full"]
  line = plan.line()
  assert line.startswith("memory plan: save_attention+offload_residual, both experts on the "
                         "device: predicted peak 115.5 GiB of 132.0 GiB usable")
  assert "faster plans rejected: save_attention, both experts on the device (173.2 GiB)" in line


def test_planner_moves_the_idle_expert_then_the_residuals_when_tighter():
  steps_480p = {"save_attention": StepMemory(int(79 * G), int(28.4 * G)),
                "full": StepMemory(int(66 * G), int(28.4 * G)),
                "save_attention+offload_residual": StepMemory(int(74 * G), int(28.4 * G)),
                "offload_residual": StepMemory(int(61 * G), int(28.4 * G))}
  plan, compiled = plan_for(75, steps_480p)  # an H100 at 480p: the idle expert waits on the host
  assert plan.chosen == Candidate("full", True)
  assert sorted(compiled) == sorted(set(compiled))  # each checkpointing plan compiled once

  plan, _ = plan_for(60, STEP_720P)  # an H100 at 720p: both
  assert plan.chosen == Candidate("offload_residual", True)
  assert "idle expert in host memory" in plan.line()


def test_nothing_fits_says_what_would():
  with pytest.raises(DoesNotFit) as e:
    memory_plan.choose(memory_plan.candidates(True), lambda r, _: STEP_720P[r], IDLE, int(40 * G),
                       capacity_source="test", bucket="81x720x1280",
                       advice=lambda est, usable: f"about "
                       f"{memory_plan.frames_that_fit(81, est, usable)} frames")
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("nothing fits: the smallest plan (offload_residual, idle expert in host "
                        "memory) needs 56.5 GiB per device for 81x720x1280 and 40.0 GiB are usable")
  assert msg.endswith("about 29 frames")  # (40 - 28.4) / (56.5 - 28.4) of 21 latent frames: 8


# One expert's 480x832x81 step as measured on an H200 (both resident: 104.8, 94.2, 81.3, 69.5 GiB
# with the idle expert), and the same with the block weights (26.6 GiB) in host memory: the
# arguments lose them, the temporaries gain the blocks in flight.
STEP_480P = {"save_attention": StepMemory(int(76.4 * G), int(28.4 * G)),
             "full": StepMemory(int(65.8 * G), int(28.4 * G)),
             "save_attention+offload_residual": StepMemory(int(52.9 * G), int(28.4 * G)),
             "offload_residual": StepMemory(int(41.1 * G), int(28.4 * G))}
STREAMED_480P = {r: StepMemory(m.peak - int(25.2 * G), m.arguments - int(26.6 * G),
                                int(26.6 * G)) for r, m in STEP_480P.items()}


def test_planner_streams_the_weights_only_when_no_resident_plan_fits():
  plan, compiled = plan_for(75, STEP_480P, STREAMED_480P)  # an H100: as measured, no streaming
  assert plan.chosen == Candidate("offload_residual", False)
  assert not any("streamed" in c for c in compiled) and "streamed" not in plan.line()

  plan, compiled = plan_for(40, STEP_480P, STREAMED_480P)  # below one resident expert's step
  assert plan.chosen == Candidate("save_attention+offload_residual", True, True)
  assert [e.candidate for e in plan.rejected] == list(memory_plan.ORDER[:10])
  assert plan.line().startswith(
      "memory plan: save_attention+offload_residual, idle expert in host memory, block weights "
      "streamed from host memory: predicted peak 27.7 GiB of 40.0 GiB usable")

  plan, _ = plan_for(23 * 0.95, STEP_480P, STREAMED_480P)  # a 24 GB card
  assert plan.chosen == Candidate("offload_residual", True, True)
  assert plan.estimate.total == STREAMED_480P["offload_residual"].peak

  with pytest.raises(DoesNotFit):  # streaming turned off: nothing resident fits 24 GB
    plan_for(23 * 0.95, STEP_480P, STREAMED_480P, stream=False)
  plan, compiled = plan_for(200, STEP_480P, STREAMED_480P, stream=True)  # fixed: always streamed
  assert plan.chosen == Candidate("save_attention", True, True)
  assert compiled == ["save_attention streamed"]


def test_streaming_candidates_come_last_and_follow_explicit_settings():
  two = memory_plan.candidates(True)
  assert [c.stream for c in two] == [False] * 8 + [True] * 4
  assert all(c.offload_expert for c in two[8:])
  single = memory_plan.candidates(False)
  assert [(c.remat, c.offload_expert, c.stream) for c in single[4:]] == [
      ("save_attention", False, True), ("full", False, True),
      ("save_attention+offload_residual", False, True), ("offload_residual", False, True)]
  assert single[5].describe(False) == "full, block weights streamed from host memory"
  resident_idle = memory_plan.candidates(True, offload_expert=False)
  assert resident_idle[-1] == Candidate("offload_residual", False, True)
  assert memory_plan.candidates(True, "full", stream=True) == [Candidate("full", True, True)]
  assert memory_plan.candidates(True, "none", False, False) == [Candidate("none", False)]


def test_stream_weights_settings_are_checked_before_anything_loads():
  from helpers import get_config

  from wan_jax.train.run.planned_step import explicit_settings
  from wan_jax.train.run.validate import check_run_config

  cfg = get_config()
  assert explicit_settings(cfg) == (None, None, None)
  cfg.train.stream_weights = "True"  # as --config.train.stream_weights=True arrives
  assert explicit_settings(cfg)[2] is True
  cfg.train.remat_policy = "none"
  with pytest.raises(ValueError, match="stream_weights=True needs gradient checkpointing"):
    explicit_settings(cfg)
  cfg.train.remat_policy = "auto"
  cfg.lora.enabled = False
  with pytest.raises(ValueError, match="streams the frozen base of a LoRA run"):
    explicit_settings(cfg)
  cfg.train.stream_weights = "auto"  # a full fine-tune never streams on its own
  assert explicit_settings(cfg)[2] is False
  cfg.train.stream_weights = "sometimes"
  with pytest.raises(ValueError, match=r"^train.stream_weights must be auto, True or False, "
                                       r"got 'sometimes'$"):
    check_run_config(cfg)


def test_explicit_settings_fix_their_part_of_the_plan():
  assert memory_plan.candidates(True, remat="full") == [
      Candidate("full", False), Candidate("full", True), Candidate("full", True, True)]
  assert memory_plan.candidates(True, offload_expert=True)[0] == Candidate("save_attention", True)
  assert memory_plan.candidates(True, "none", False) == [Candidate("none", False)]
  single = memory_plan.candidates(False)
  assert [c.remat for c in single] == ["save_attention", "full", "save_attention+offload_residual",
                                       "offload_residual"] * 2  # then the same, streamed
  assert memory_plan.fsdp_that_fits(memory_plan.Estimate(Candidate("full", False),
                                                         StepMemory(100 * G, 60 * G), 0),
                                    weights=60 * G, usable=70 * G) == 2


# --- The planner inside the trainer, on the tiny run (real compiles, real caches) -------------

def tiny_run(tmp_path_factory):
  from helpers import get_config

  from wan_jax.train.run import loading
  from wan_jax.train.step.mesh import make_mesh
  from wan_jax.train.step.optimizer import make_optimizer
  from wan_jax.train.run.data_setup import build_data, prepare_datasets

  cfg = get_config()
  root = tmp_path_factory.mktemp("planned")
  cfg.cache.dir = str(root / "cache")
  cfg = prepare_datasets(cfg, root)
  mesh = make_mesh()
  enc = loading.encoders(cfg, root)
  pipeline = build_data(cfg, root, enc, mesh, progress=False)
  vae = enc.vae_config
  settings = StepSettings(sampling="uniform", shift=1.0, logit_mean=0.0, logit_std=1.0,
                          sample_posterior=True, latents_mean=tuple(vae.latents_mean),
                          latents_std=tuple(vae.latents_std))
  tx = make_optimizer(cfg.train, 10)
  return cfg, tx, settings, mesh, pipeline, enc.text_len


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return tiny_run(tmp_path_factory)


def plan_with(tiny, gib: float | None = None, **train):
  from wan_jax.train.run.planned_step import plan_train_step

  cfg, tx, settings, mesh, pipeline, text_len = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.train.device_memory_gib = gib or 0.0
  for k, v in train.items():
    cfg.train[k] = v
  return plan_train_step(cfg, ("high", "low"), tx, settings, mesh, pipeline, text_len,
                         progress=False)


@pytest.mark.slow
def test_the_trainer_plans_by_the_compiled_step(tiny):
  unchecked = plan_with(tiny)  # the CPU has no limit: the fastest plan, said to be unchecked
  assert unchecked.plan.chosen == Candidate("save_attention", False)
  assert "no fit was checked" in unchecked.plan.line()
  assert "5x48x64" in unchecked.plan.line()  # the largest bucket (the clip), not the images

  roomy = plan_with(tiny, 1.0).plan
  assert roomy.chosen == Candidate("save_attention", False)
  idle, attention = roomy.estimate.idle, roomy.estimate.step
  full = plan_with(tiny, 1.0, remat_policy="full").plan.estimate.step
  assert idle > 0 and attention.peak > full.peak  # kept attention outputs cost memory
  usable = lambda n: (n + 1024) / 0.95 / GIB  # device_memory_gib leaving n bytes (+ rounding)

  # Only without the idle expert: every resident candidate is compiled and rejected first.
  tight = plan_with(tiny, usable(attention.peak)).plan
  assert tight.chosen == Candidate("save_attention", True)
  assert tight.estimate.total == attention.peak
  assert [e.candidate for e in tight.rejected] == [c for c in memory_plan.ORDER[:4]]
  assert "idle expert in host memory" in tight.line()


@pytest.mark.slow
def test_the_chosen_compile_trains_the_largest_bucket(tiny):
  """The step compiled while planning is the one that runs: a batch of the largest bucket
  trains without another compile; the image bucket compiles once on first use."""
  from wan_jax.train.run.planned_step import abstract_expert
  from wan_jax.train.run.random_weights import random_state
  from wan_jax.train.run.data_setup import global_batch

  cfg, tx, settings, mesh, pipeline, _ = tiny
  planned = plan_with(tiny, 1.0)
  step = planned.step
  assert len(step.compiled) == 1  # the planner's compile, for the clip bucket
  e = abstract_expert(cfg, "high", planned.plan.chosen.remat, tx, mesh)
  trainable = random_state(e.trainable, jax.random.key(0), jax.tree.map(lambda x: x.sharding,
                                                                           e.trainable))
  frozen = random_state(e.frozen, jax.random.key(1), jax.tree.map(lambda x: x.sharding, e.frozen))
  opt_state = jax.jit(tx.init, out_shardings=jax.tree.map(lambda x: x.sharding, e.opt_state))(
      trainable)
  shapes = set()
  for i, batch in zip(range(6), pipeline.dataset):
    shapes.add(batch["latent_mean"].shape)
    inputs = global_batch(batch, mesh, settings.task.batch_ndims)
    trainable, opt_state, m = step(trainable, opt_state, frozen, inputs, step_keys(0, i),
                                   jnp.float32(0.0), jnp.float32(1000.0))
    assert bool(m["finite"])
  assert shapes == {(2, 2, 6, 8, 16), (2, 1, 6, 8, 16)}  # the clip and the image buckets
  assert len(step.compiled) == 2  # one more compile, for the image bucket only


@pytest.mark.slow
def test_launch_prints_the_plan_and_trains_at_random_weights(tmp_path):
  """`model.random_weights` through launch.py at the tiny sizes: generated clips, random
  encoders drawn on the device, a checked plan, both experts trained, files written."""
  from helpers import launch

  run = tmp_path / "run"
  args = ["--workdir", str(run), "--noprogress", "--config.model.random_weights=True",
          "--config.train.steps=2", "--config.train.switch_boundary_every=1",
          "--config.checkpoint.every=2", "--config.save.every=0", "--config.preview.every=2",
          "--config.preview.num_steps=2", f"--config.cache.dir={tmp_path / 'cache'}"]
  result = launch(*args, "--config.train.device_memory_gib=1")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  plan = [line for line in out.splitlines() if line.startswith("memory plan:")]
  assert len(plan) == 1 and plan[0].startswith(
      "memory plan: save_attention, both experts on the device: predicted peak ")
  assert "of 972.8 MiB usable (1.0 GiB from train.device_memory_gib, less a 5% margin)" in plan[0]
  assert "2 items, 0 skipped" in out and "[(5, 32, 80)]" in out  # two generated 96x48 clips
  assert "trained 2 steps" in out and "steps skipped (non-finite loss or gradients): 0" in out
  assert sorted(p.name for p in (run / "lora").iterdir()) == [
      "demo_lora_high_noise.safetensors", "demo_lora_low_noise.safetensors"]
  assert (run / "previews/step_000002_0.mp4").is_file()
  assert (run / "checkpoints/2").is_dir()

  # The plan fixed to the one compiled above (the search over every plan is the in-process
  # tests' job; here it would compile eight more through launch.py).
  refused = launch(*args[:1], str(tmp_path / "small"), *args[2:],
                   "--config.train.device_memory_gib=0.0001",
                   "--config.train.remat_policy=save_attention",
                   "--config.train.offload_inactive_expert=False",
                   "--config.train.stream_weights=False")
  assert refused.returncode == 2
  assert refused.stderr.startswith("launch.py: DoesNotFit: nothing fits: the smallest plan")
  assert len(refused.stderr.strip().splitlines()) == 2  # the error and the --traceback hint
  assert not (tmp_path / "small/lora").exists()  # refused before any training or export
  assert not any((tmp_path / "small/checkpoints").iterdir())


@pytest.mark.slow
def test_when_only_an_fp8_base_would_fit_the_refusal_proposes_it_with_a_figure(tiny):
  """The planner never quantises on its own (it changes the model): between what the fp8 and
  the bf16 base need, the one-line refusal names model.quantize=fp8 and predicts its peak."""
  import re
  fixed = {"remat_policy": "save_attention", "offload_inactive_expert": False,
           "stream_weights": "False"}  # one plan: both experts on the device
  resident = plan_with(tiny, 1.0, **fixed).plan.estimate.total
  cfg, *rest = tiny
  fp8_cfg = cfg.copy_and_resolve_references()
  fp8_cfg.model.quantize = "fp8"
  fp8 = plan_with((fp8_cfg, *rest), 1.0, **fixed).plan.estimate.total  # the fp8 step, compiled
  assert fp8 < resident
  usable = lambda n: n / 0.95 / GIB
  with pytest.raises(DoesNotFit) as e:
    plan_with(tiny, usable((fp8 + resident) / 2), **fixed)
  message = str(e.value)
  predicted = re.search(r"what would fit: model.quantize=fp8 \(predicted ([\d.]+) MiB for that "
                        r"plan; an fp8 base changes the model's numbers a little", message)
  assert predicted and "\n" not in message, message
  # Predicted from the weights' bytes alone (one block's dequantised copy is not counted).
  assert float(predicted.group(1)) == pytest.approx(fp8 / 2**20, rel=0.1)
  with pytest.raises(DoesNotFit) as e:  # below the fp8 figure too: not proposed
    plan_with(tiny, usable(fp8 * 0.8), **fixed)
  assert "quantize" not in str(e.value)


@pytest.mark.slow
def test_the_trainer_streams_only_when_nothing_resident_fits(tiny):
  """Real compiles of the tiny step: streaming takes the block weights out of the device figure
  (the CPU counts host memory as its own; the planner takes them out as a GPU reports them), and
  the planner picks the streamed plan for a capacity between the two."""
  fixed = {"remat_policy": "offload_residual", "offload_inactive_expert": True}
  resident = plan_with(tiny, 1.0, stream_weights="False", **fixed).plan.estimate.step
  streamed = plan_with(tiny, 1.0, stream_weights="True", **fixed).plan.estimate.step
  from wan_jax.train.run.planned_step import abstract_expert
  cfg, tx, _, mesh, _, _ = tiny
  blocks = abstract_expert(cfg, "high", "offload_residual", tx, mesh, True).host_bytes()
  assert blocks > 0 and resident.arguments - streamed.arguments == blocks
  assert streamed.peak < resident.peak
  usable = lambda n: (n + 1024) / 0.95 / GIB
  plan = plan_with(tiny, usable(streamed.peak), **fixed).plan
  assert plan.chosen == Candidate("offload_residual", True, True)
  assert "block weights streamed from host memory: predicted peak" in plan.line()
  assert f"; host: {memory_plan.size(plan.estimate.host)} pinned of " in plan.line()
  assert plan.estimate.host > blocks + plan.estimate.idle_host > blocks  # + the residuals
  with pytest.raises(DoesNotFit, match=r"^nothing fits host memory: .* are usable \(0.0 MiB "
                                       r"train.host_memory_gib, less a 5% margin\); what would "
                                       "help: model.quantize=fp8"):
    plan_with(tiny, 1.0, host_memory_gib=1e-6, **fixed)


def test_host_memory_is_planned_too():
  """A 24 GB card: the streamed plan needs the idle expert (28 GiB) and the streamed blocks
  (26.6 GiB) pinned in host RAM: it fits 64 GiB, and 32 GiB is one line saying what helps."""
  def choose(host_gib, stream=None):
    return memory_plan.choose(
        memory_plan.candidates(True, stream=stream),
        lambda r, streamed: (STREAMED_480P if streamed else STEP_480P)[r], IDLE,
        int(23 * 0.95 * G), capacity_source="test", bucket="81x480x832",
        host_usable=int(host_gib * G), host_source="test RAM")

  plan = choose(64)
  assert plan.chosen == Candidate("offload_residual", True, True)
  assert plan.estimate.host == int(26.6 * G) + IDLE
  assert "; host: 54.6 GiB pinned of 64.0 GiB usable (test RAM)" in plan.line()
  with pytest.raises(DoesNotFit) as e:
    choose(32)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(
      "nothing fits host memory: the plans that fit the device need pinned host memory, the "
      "least of them (offload_residual, idle expert in host memory, block weights streamed from "
      "host memory) 54.6 GiB for 81x480x832, and 32.0 GiB are usable (test RAM); what would "
      "help: model.quantize=fp8")
  roomy = memory_plan.choose(memory_plan.candidates(True), lambda r, _: STEP_480P[r], IDLE,
                             int(200 * G), host_usable=0, host_source="none")
  assert roomy.chosen == Candidate("save_attention", False)  # nothing pinned: 0 bytes fit 0

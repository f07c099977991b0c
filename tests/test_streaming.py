"""Weights streamed from host memory (train.stream_weights): the layer scan fetches each block's
frozen weights inside the step, and nothing else changes. Losses and gradients equal the resident
ones under every checkpointing plan; the compiled step takes the blocks in host memory; the
planner streams only when no resident plan fits; the trainer keeps streamed blocks in host
memory across expert switches and trains exactly as resident."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wan_jax
from wan_jax.model.streaming import fetch, in_host_memory
from wan_jax.model.vae_config import tiny_vae
from wan_jax.model.lora import FROZEN, LORA, add_lora
from wan_jax.train.step.mesh import make_mesh
from wan_jax.train.step.sharding import HOST, streamed, tree_shardings
from wan_jax.train.step.train_step import StepSettings, loss_and_grads, make_train_step, step_keys

from helpers import get_config, losses, quiet, tiny_batch

PLANS = ("full", "save_attention", "offload_residual", "save_attention+offload_residual")


def settings() -> StepSettings:
  vae = tiny_vae()
  return StepSettings(sampling="uniform", shift=1.0, logit_mean=0.0, logit_std=1.0,
                      sample_posterior=True, latents_mean=tuple(vae.latents_mean),
                      latents_std=tuple(vae.latents_std))


def split(plan: str):
  model = wan_jax.WanTransformer(wan_jax.tiny(remat=plan, num_layers=3), rngs=nnx.Rngs(0))
  add_lora(model, 4, 8.0, seed=0)
  graphdef, trainable, frozen = nnx.split(model, LORA, FROZEN)
  trainable = jax.tree.map(lambda x: x + 0.01, trainable)  # B != 0: adapters change the output
  return graphdef, trainable, frozen


def result(plan: str, stream: bool):
  graphdef, trainable, frozen = split(plan)
  mesh = make_mesh()
  shardings = tree_shardings(frozen, mesh)
  frozen = jax.device_put(frozen, streamed(shardings) if stream else shardings)
  fn = jax.jit(lambda tr, fr, b, k: loss_and_grads(graphdef, tr, fr, b, k, jnp.float32(0.0),
                                                   jnp.float32(1000.0), settings()))
  loss, _, grads = fn(trainable, frozen, tiny_batch(3, 6, 10), step_keys(0, 3))
  return float(loss), [np.asarray(g) for g in jax.tree.leaves(grads)], frozen


@pytest.mark.parametrize("plan", PLANS)
def test_a_streamed_stack_equals_a_resident_one_under_each_plan(plan):
  """A small scanned stack built like the model's (fetch inside the checkpointed block, its
  input named for the offload plans): the same loss and gradients to the bit, and the fetch is
  in the traced step only when the weights wait in host memory."""
  from wan_jax.model.remat import name_block_input, remat_block

  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((3, 8, 8)) / 3, jnp.float32)  # frozen, per layer
  a = jnp.asarray(rng.standard_normal((3, 8, 2)) / 3, jnp.float32)  # trainable, per layer
  x = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)

  def block(h, layer):
    w_l, a_l = fetch(layer)
    h = name_block_input(h)
    return jnp.tanh(h @ w_l) + jnp.sum(h @ a_l, axis=-1, keepdims=True), None

  def loss(a, w, x):
    return jnp.sum(jax.lax.scan(remat_block(block, plan), x, (w, a))[0] ** 2)

  host = jax.device_put(w, tree_shardings(w, make_mesh()).with_memory_kind(HOST))
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
  (want, want_g), (got, got_g) = grad(a, w, x), grad(a, host, x)
  assert float(got) == float(want)
  for g, h in zip(got_g, want_g):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
  assert "device_put" in str(jax.make_jaxpr(loss)(a, host, x))
  assert "device_put" not in str(jax.make_jaxpr(loss)(a, w, x))


@pytest.mark.slow
def test_the_streamed_model_gives_the_resident_loss_and_gradients_under_each_plan():
  """The tiny transformer, fp32, LoRA with B != 0: every plan's streamed step equals the
  resident one (1e-6), with the block weights in host memory and the rest on the device."""
  want_loss, want_grads, _ = result("full", False)
  for plan in PLANS:
    loss, grads, frozen = result(plan, stream=True)
    assert kinds(frozen) == {"blocks": {HOST}, "rest": {"device"}}
    assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7), plan
    assert len(grads) == len(want_grads) and all(np.abs(g).max() > 0 for g in grads)
    for got, want in zip(grads, want_grads):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_fetch_copies_only_what_waits_in_host_memory():
  mesh = make_mesh()
  x = jnp.arange(6.0)
  host = jax.device_put(x, tree_shardings(x, mesh).with_memory_kind(HOST))
  seen = {}

  def f(h, d):
    seen["in"] = (in_host_memory(h), in_host_memory(d))
    h2, d2 = fetch((h, d))
    seen["out"] = (in_host_memory(h2), in_host_memory(d2))
    return h2 * d2

  np.testing.assert_array_equal(jax.jit(f)(host, x), np.arange(6.0) ** 2)
  assert seen == {"in": (True, False), "out": (False, False)}


@pytest.mark.slow
def test_the_compiled_step_takes_the_blocks_in_host_memory():
  """The train step's frozen inputs: block weights in pinned host memory, the embeddings and
  head on the device; one step runs and updates the adapters."""
  import optax

  graphdef, trainable, frozen = split("full")
  tx = optax.adam(1e-3)
  opt_state = tx.init(trainable)
  mesh = make_mesh()
  step = make_train_step(graphdef, tx, settings(), mesh, trainable, opt_state, frozen,
                         stream=True)
  frozen = jax.device_put(frozen, streamed(tree_shardings(frozen, mesh)))
  compiled = step.lower(trainable, opt_state, frozen, tiny_batch(3, 6, 10), step_keys(0, 0), jnp.float32(0.0),
                        jnp.float32(1000.0)).compile()
  kinds = {jax.tree_util.keystr(kp): s.memory_kind for kp, s in
           jax.tree_util.tree_leaves_with_path(compiled.input_shardings[0][2])}
  assert kinds and all((k == HOST) == ("blocks" in p) for p, k in kinds.items())
  before = jax.tree.map(np.asarray, trainable)
  new, _, metrics = compiled(trainable, opt_state, frozen, tiny_batch(3, 6, 10), step_keys(0, 0),
                             jnp.float32(0.0), jnp.float32(1000.0))
  assert bool(metrics["finite"])
  assert any(np.abs(np.asarray(a) - b).max() > 0
             for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(before)))


def kinds(tree) -> dict[str, set[str]]:
  """memory kinds of a tree's leaves, split into block weights and the rest."""
  out: dict[str, set[str]] = {"blocks": set(), "rest": set()}
  for kp, x in jax.tree_util.tree_leaves_with_path(tree):
    out["blocks" if "blocks" in jax.tree_util.keystr(kp) else "rest"].add(x.sharding.memory_kind)
  return out


@pytest.mark.slow
def test_streamed_blocks_stay_in_host_memory_across_expert_switches():
  from wan_jax.train.run.expert_states import Experts
  from wan_jax.train.step.optimizer import make_optimizer

  cfg = get_config()
  tx = make_optimizer(cfg.train, 10)
  experts = Experts(cfg, ["high", "low"], tx, make_mesh(), "full", offload=True, stream=True)
  high, low = experts["high"], experts["low"]
  assert kinds(high.frozen) == {"blocks": {HOST}, "rest": {"device"}}
  assert kinds(low.frozen) == {"blocks": {HOST}, "rest": {HOST}}  # idle: all of it waits
  assert kinds(high.trainable) == {"blocks": {"device"}, "rest": set()}  # adapters: blocks only
  experts.bring("low")
  assert kinds(low.frozen) == {"blocks": {HOST}, "rest": {"device"}}
  assert kinds(low.trainable)["blocks"] == {"device"}
  assert kinds(high.frozen) == {"blocks": {HOST}, "rest": {HOST}}
  assert kinds(high.opt_state)["blocks"] == {HOST}


@pytest.mark.slow
def test_a_streamed_run_trains_exactly_as_a_resident_one(tmp_path, capsys):
  """Both experts, a switch every step, the idle expert in host memory: the same losses, LoRA
  files and preview with the block weights streamed, and the plan line says so."""
  from safetensors.numpy import load_file

  from wan_jax.train.run.trainer import train

  def run(name: str, stream: str):
    cfg = quiet(get_config(), 2)
    cfg.train.switch_boundary_every = 1
    cfg.train.offload_inactive_expert = True
    cfg.train.stream_weights = stream
    cfg.train.remat_policy = "full"
    cfg.checkpoint.every = 2
    cfg.preview.every, cfg.preview.num_steps = 2, 2
    cfg.cache.dir = str(tmp_path / "cache")
    train(cfg, tmp_path / name, progress=False)
    return capsys.readouterr().out

  plan_line = lambda out: [line for line in out.splitlines() if line.startswith("memory plan:")]
  resident = plan_line(run("resident", "False"))
  assert len(resident) == 1 and "streamed" not in resident[0]
  streamed = plan_line(run("streamed", "True"))
  assert len(streamed) == 1 and "block weights streamed from host memory" in streamed[0]
  want, got = losses(tmp_path / "resident"), losses(tmp_path / "streamed")
  assert sorted(got) == [1, 2]
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-6)
  for name in ("demo_lora_high_noise.safetensors", "demo_lora_low_noise.safetensors"):
    a = load_file(tmp_path / "resident/lora" / name)
    b = load_file(tmp_path / "streamed/lora" / name)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(b[key].astype(np.float32), a[key].astype(np.float32),
                                 rtol=1e-2, atol=1e-6)  # bf16 files
  assert (tmp_path / "streamed/previews/step_000002_0.mp4").is_file()

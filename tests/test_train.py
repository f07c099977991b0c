"""The trainer end to end on the tiny config: it learns, it resumes exactly, it survives a save
cut short and a damaged checkpoint, bad steps are skipped, and 8 devices train like one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from wan_jax.data.config import dataset_config
from wan_jax.train.run.trainer import train

from helpers import (REPO, flip_bytes, get_config, launch, losses, on_demo_data, quiet,
                     tiny_lora_step)


@pytest.fixture(scope="module")
def one_masked_image(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("one")
  (root / "media").mkdir()
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (32, 48, 3), np.uint8)).save(root / "media/one.png")
  mask = np.zeros((32, 48), np.uint8)
  mask[:, :24] = 255
  Image.fromarray(mask).save(root / "masks/one.png")
  return root


@pytest.mark.slow
def test_the_tiny_model_overfits_one_masked_example(tmp_path, one_masked_image, monkeypatch):
  """Also: the loop reads each step's loss one step late (it queues step k+1 first), so the
  device never waits on the host's logging."""
  from wan_jax.train.run.planned_step import CompiledStep

  events: list[tuple[str, int]] = []
  queue = CompiledStep.__call__

  class Loss:  # the step's loss, noting when the host reads it
    def __init__(self, value, n):
      self.value, self.n = value, n

    def __float__(self):
      events.append(("read", self.n))
      return float(self.value)

  def queued(self, *args):
    trainable, opt_state, m = queue(self, *args)
    events.append(("queue", sum(kind == "queue" for kind, _ in events) + 1))
    return trainable, opt_state, {**m, "loss": Loss(m["loss"], events[-1][1])}

  monkeypatch.setattr(CompiledStep, "__call__", queued)
  cfg = quiet(get_config(), 120)
  cfg.datasets = [dataset_config(folder_path=str(one_masked_image / "media"),
                                 mask_path=str(one_masked_image / "masks"), resolution=[48],
                                 default_caption="one", caption_dropout_rate=0.0)]
  cfg.train.batch_size = 1
  cfg.lora.enabled = False  # full fine-tuning of the high-noise expert
  cfg.model.train_low_noise = False
  cfg.train.learning_rate = 3e-3
  cfg.train.sample_posterior = False
  cfg.checkpoint.every = 1000  # the final checkpoint only
  cfg.cache.dir = str(tmp_path / "cache")
  summary = train(cfg, tmp_path / "run", progress=False)
  got = list(losses(tmp_path / "run").values())
  assert len(got) == 120 and summary.skipped_steps == 0
  assert np.mean(got[-10:]) < 0.5 * np.mean(got[:5]), (got[:5], got[-10:])
  assert (tmp_path / "run/weights/demo_lora_high_noise.safetensors").is_file()  # full export
  want = [("queue", 1)] + [e for k in range(1, 120) for e in (("queue", k + 1), ("read", k))]
  assert events == want + [("read", 120)]  # no checkpoint, export or preview until the end


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run_after_a_cut_save_a_damaged_checkpoint_and_torn_files(
    tmp_path):
  def config(steps):
    cfg = quiet(get_config(), steps)
    cfg.checkpoint.every = 3
    cfg.train.switch_boundary_every = 2
    return on_demo_data(cfg, tmp_path)  # one data set and cache for all runs

  from wan_jax.data.demo import make_demo_dataset
  make_demo_dataset(tmp_path / "data")
  train(config(7), tmp_path / "straight", progress=False)
  straight = losses(tmp_path / "straight")

  train(config(4), tmp_path / "split", progress=False)  # checkpoints at 3 and (final) 4
  # The step-6 save of the next run is cut short: Orbax's temporary folder, never finalised.
  train(config(6), tmp_path / "split", progress=False)
  ckpts = tmp_path / "split/checkpoints"
  shutil.move(ckpts / "6", ckpts / "6.orbax-checkpoint-tmp-1234")
  # And the last complete one (4) was damaged since: 64 bytes of its array data flipped.
  flip_bytes(ckpts / "4")
  # A kill mid-write left a partial metrics line and an export's temporary file.
  with (tmp_path / "split/metrics.jsonl").open("a") as f:
    f.write('{"step": 7, "loss": 0.12')
  stray = tmp_path / "split/lora/.demo_lora_high_noise.k2j4.tmp.safetensors"
  stray.parent.mkdir(exist_ok=True)  # the final LoRA files of the earlier runs are there
  stray.write_bytes(b"partial")
  summary = train(config(7), tmp_path / "split", progress=False)
  assert not stray.exists()
  assert summary.resumed_from == 3  # the last complete and intact checkpoint
  assert [p.name.split("-")[0] for p in (tmp_path / "split/damaged_checkpoints").iterdir()] == ["4"]
  assert not list(ckpts.glob("*tmp*"))  # the temporary folder of the cut save was removed
  split = losses(tmp_path / "split")
  assert sorted(straight) == sorted(split) == list(range(1, 8))
  assert [split[s] for s in range(1, 8)] == [straight[s] for s in range(1, 8)]  # exactly
  rows = [json.loads(x) for x in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
  assert [r["expert"] for r in rows[:4]] == ["high", "high", "low", "low"]


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_and_changes_nothing():
  step, trainable, opt_state, frozen, batch = tiny_lora_step(optax.adam(1e-2))
  before = jax.tree.map(np.asarray, trainable)
  new, new_opt, m = step(trainable, opt_state, frozen,
                         batch | {"latent_mean": batch["latent_mean"].at[0, 0, 0, 0, 0].set(jnp.nan)},
                         jax.random.key(0), jnp.float32(0), jnp.float32(875))
  assert not bool(m["finite"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new), before)
  new, _, m = step(new, new_opt, frozen, batch, jax.random.key(0), jnp.float32(0),
                   jnp.float32(875))
  assert bool(m["finite"])
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new, before)
  assert any(jax.tree.leaves(changed))


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path):
  from wan_jax.data.demo import make_demo_dataset
  media, masks = make_demo_dataset(tmp_path / "data")
  common = ["--config.train.steps=4", "--config.train.batch_size=4", "--config.preview.every=0",
            "--config.save.every=0", "--config.train.switch_boundary_every=2",
            "--config.mesh.min_shard_size=0", "--config.save.dtype=float32",
            f"--config.cache.dir={tmp_path / 'cache'}",
            f"--config.datasets[0].folder_path={media}", f"--config.datasets[0].mask_path={masks}"]
  one = launch("--workdir", tmp_path / "one", "--noprogress", *common, devices=1)
  assert one.returncode == 0, one.stderr[-3000:]
  eight = launch("--workdir", tmp_path / "eight", "--noprogress", *common, "--config.mesh.data=2",
                 "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8)
  assert eight.returncode == 0, eight.stderr[-3000:]
  a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
  from safetensors.numpy import load_file
  for expert in ("high_noise", "low_noise"):
    wa = load_file(tmp_path / f"one/lora/demo_lora_{expert}.safetensors")
    wb = load_file(tmp_path / f"eight/lora/demo_lora_{expert}.safetensors")
    assert wa.keys() == wb.keys()
    # Sharded sums round differently; Adam divides by sqrt(v), so where a gradient is near zero a
    # rounding difference moves an update by up to ~1e-6 of the 2e-3 step: atol is 0.5% of one
    # step (a real divergence, e.g. a row missing on one device, moves whole steps).
    for k in wa:
      np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_config_errors_are_one_clear_line(tmp_path):
  helped = launch("--noprogress", "--help", devices=1)
  assert helped.returncode == 0 and "--cache_only" in helped.stdout and "--config.<key>" in helped.stdout
  bad = launch("--workdir", tmp_path / "a", "--noprogress", "--config.model.arch=nope", devices=1)
  assert bad.returncode == 2 and "model.arch must be one of" in bad.stderr
  real = launch("--noprogress", "--config", REPO / "configs/wan22_masked.py", devices=1)
  assert real.returncode == 2 and "--workdir is required" in real.stderr
  real = launch("--workdir", tmp_path / "c", "--noprogress", "--config",
                REPO / "configs/wan22_masked.py", devices=1)
  assert real.returncode == 2 and "model.name_or_path is required" in real.stderr


@pytest.mark.slow
def test_offloading_the_idle_expert_changes_nothing_but_where_it_waits(tmp_path, monkeypatch):
  def config(offload: bool):
    cfg = get_config()
    cfg.train.steps = 4
    cfg.train.switch_boundary_every = 1
    cfg.train.offload_inactive_expert = offload
    cfg.checkpoint.every = cfg.save.every = cfg.preview.every = 2
    cfg.preview.num_steps = 6  # with shift 12 the last steps are low-noise ones
    return on_demo_data(cfg, tmp_path)  # one data set and cache for all runs

  from wan_jax.data.demo import make_demo_dataset
  make_demo_dataset(tmp_path / "data")
  from wan_jax.train.run import expert_states
  train(config(False), tmp_path / "resident", progress=False)
  kinds, place = [], expert_states.place
  def recording_place(*args):
    out = place(*args)
    kinds.extend({x.sharding.memory_kind for x in jax.tree.leaves(out)})
    return out
  monkeypatch.setattr(expert_states, "place", recording_place)
  summary = train(config(True), tmp_path / "offload", progress=False)
  assert kinds.count("pinned_host") >= 4 * 3  # each switch parks weights, frozen and moments
  # Previews sampled one expert at a time (high-noise steps, swap, low-noise steps) look the same
  # (up to float rounding that H.264 can amplify by a level or two; a wrong expert differs by tens).
  import imageio.v3 as iio
  for name in ("step_000002_0.mp4", "step_000004_0.mp4"):
    a = iio.imread(tmp_path / "resident/previews" / name, plugin="pyav").astype(float)
    b = iio.imread(tmp_path / "offload/previews" / name, plugin="pyav").astype(float)
    assert np.abs(a - b).mean() < 3.0, name
  assert losses(tmp_path / "offload") == losses(tmp_path / "resident")
  assert any(f.endswith("step_000004_0.mp4") for f in summary.files)


@pytest.mark.slow
def test_gradient_accumulation_applies_one_update_per_k_batches_and_the_schedule_warms_up():
  from wan_jax.train.step.optimizer import learning_rate, make_optimizer
  train_cfg = get_config().train
  train_cfg.grad_accum, train_cfg.steps, train_cfg.warmup_steps = 2, 20, 4
  train_cfg.lr_schedule = "cosine"
  lr = learning_rate(train_cfg)
  assert [float(lr(i)) for i in range(4)] == pytest.approx(
      [train_cfg.learning_rate * k / 4 for k in (1, 2, 3, 4)])
  assert float(lr(10)) < 1e-3 * train_cfg.learning_rate  # cosine ends at updates = steps / accum

  # B != 0 (offset), so A gets gradients too.
  step, trainable, opt_state, frozen, batch = tiny_lora_step(make_optimizer(train_cfg), 0.01)
  snapshots = [jax.tree.map(np.asarray, trainable)]
  for i in range(4):
    trainable, opt_state, _ = step(trainable, opt_state, frozen, batch, jax.random.key(i),
                                   jnp.float32(0), jnp.float32(875))
    snapshots.append(jax.tree.map(np.asarray, trainable))
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  assert same(snapshots[0], snapshots[1]) and not same(snapshots[1], snapshots[2])
  assert same(snapshots[2], snapshots[3]) and not same(snapshots[3], snapshots[4])


@pytest.mark.slow
def test_resume_refuses_a_different_run_or_a_finished_one_and_continues_its_wandb_run(
    tmp_path, monkeypatch):
  for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}.items():
    monkeypatch.setenv(name, value)
  for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # not the user's home
    monkeypatch.setenv(name, str(tmp_path / "wandb_home"))

  def config(steps, rank=4):
    cfg = quiet(get_config(), steps)
    cfg.lora.rank = rank
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.logging.wandb_project = "wan-jax-test"  # offline: its files stay in the workdir
    return cfg

  train(config(2), tmp_path / "run", progress=False)
  run_id = (tmp_path / "run/wandb_run_id").read_text().strip()
  with pytest.raises(ValueError, match="other settings for lora"):
    train(config(3, rank=8), tmp_path / "run", progress=False)
  with pytest.raises(ValueError, match="past train.steps=1"):
    train(config(1), tmp_path / "run", progress=False)
  summary = train(config(3), tmp_path / "run", progress=False)  # more steps: fine
  assert summary.resumed_from == 2 and summary.steps == 3
  assert (tmp_path / "run/wandb_run_id").read_text().strip() == run_id  # the same W&B run
  runs = sorted((tmp_path / "run/wandb").glob("offline-run-*"))
  assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
  assert all((r / f"run-{run_id}.wandb").stat().st_size > 0 for r in runs)


@pytest.mark.slow
def test_previews_of_a_one_expert_run_borrow_the_other_expert_as_released(tmp_path, monkeypatch):
  from wan_jax.train.run import loading
  loaded, real = [], loading.load_expert
  monkeypatch.setattr(loading, "load_expert",
                      lambda cfg, e, *a: loaded.append(e) or real(cfg, e, *a))
  cfg = quiet(get_config(), 2)
  cfg.model.train_high_noise = False
  cfg.preview.every, cfg.preview.num_steps = 2, 2
  cfg.cache.dir = str(tmp_path / "cache")
  summary = train(cfg, tmp_path / "run", progress=False)
  assert loaded == ["low", "high"]  # the trained one, then the idle one for the preview only
  assert any(f.endswith("step_000002_0.mp4") for f in summary.files)


def test_a_run_saved_before_a_dataset_key_existed_still_resumes(tmp_path):
  """Checkpoints keep the settings a resume must match; a key added since (trigger_word) counts
  as its default, so an upgrade does not strand a run, while a real change is still refused."""
  from wan_jax.train.run.resume import check_resume, resume_settings
  cfg = get_config()
  saved = resume_settings(cfg)
  for ds in saved["datasets"]:
    del ds["trigger_word"]
  check_resume(saved, cfg, 0, tmp_path)
  saved["datasets"][0]["flip_prob"] = 0.25
  with pytest.raises(ValueError, match="other settings for datasets"):
    check_resume(saved, cfg, 0, tmp_path)

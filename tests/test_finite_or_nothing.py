"""Finite or nothing: a step that would make the weights non-finite is not applied, no export
writes NaN, a run that skips step after step stops with one line, and settings out of range are
refused by name before anything is written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import get_config, quiet, tiny_lora_step

import wan_jax
from wan_jax.weights import export
from wan_jax.model.lora import add_lora
from wan_jax.train.run.trainer import TrainingStalled, train


@pytest.mark.slow
def test_an_update_that_breaks_the_weights_is_not_applied():
  """A NaN learning rate gives a finite loss and gradients but NaN updates."""
  step, trainable, opt_state, frozen, batch = tiny_lora_step(optax.adam(jnp.nan))
  before = jax.tree.map(np.asarray, trainable)
  new, _, m = step(trainable, opt_state, frozen, batch, jax.random.key(0), jnp.float32(0),
                   jnp.float32(875))
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert not bool(m["finite"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new), before)


def test_an_export_refuses_non_finite_weights(tmp_path):
  model = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  add_lora(model, 4, 4.0)
  b = model.blocks.ffn_in.lora_b
  b.value = b.value.at[1, 0, 0].set(jnp.nan)
  path = tmp_path / "lora/run_high_noise.safetensors"
  with pytest.raises(export.NonFiniteWeights,
                     match=r"^run_high_noise.safetensors: tensor diffusion_model\.blocks\.1\.ffn\.0"
                           r"\.lora_B\.weight holds NaN or infinite values; the file was not"):
    export.save_lora(model, path)
  assert list((tmp_path / "lora").iterdir()) == []  # no file, no temporary left behind


@pytest.mark.slow
def test_a_run_that_only_skips_stops_with_one_line(tmp_path):
  cfg = quiet(get_config(), 12)
  cfg.train.learning_rate = 1e30  # finite, so allowed; the first update overflows what follows
  cfg.train.warmup_steps = 0
  cfg.train.max_skipped_in_a_row = 3
  cfg.cache.dir = str(tmp_path / "cache")
  with pytest.raises(TrainingStalled, match=r"^steps (\d+)-(\d+) were all skipped \(non-finite "
                                            r"loss, gradients or updated weights\): stopping"):
    train(cfg, tmp_path / "run", progress=False)
  assert not (tmp_path / "run/lora").exists()  # nothing exported from a stalled run


@pytest.mark.parametrize("key, value, message", [
    ("train.steps", 0, "train.steps must be a whole number >= 1, got 0"),
    ("train.steps", -5, "train.steps must be a whole number >= 1, got -5"),
    ("train.batch_size", 0, "train.batch_size must be a whole number >= 1, got 0"),
    ("train.learning_rate", float("nan"), "train.learning_rate must be finite and > 0, got nan"),
    ("train.learning_rate", -1.0, "train.learning_rate must be finite and > 0, got -1"),
    ("train.warmup_steps", -3, "train.warmup_steps must be a whole number >= 0 (0 = off), got -3"),
    ("train.max_grad_norm", float("nan"), "train.max_grad_norm must be finite and >= 0, got nan"),
    ("checkpoint.every", 0, "checkpoint.every must be a whole number >= 1, got 0"),
    ("preview.num_frames", 3, "preview.num_frames must be 1 or 4k+1 (5, 9, ..., 81)"),
    ("datasets.0.loss_multiplier", 0.0, "datasets[0].loss_multiplier must be finite and > 0"),
    ("datasets.0.flip_prob", 2.0, "datasets[0].flip_prob must be in [0, 1], got 2"),
    ("datasets.0.num_frames", 3, "datasets[0].num_frames must be 1 or 4k+1"),
    ("datasets.0.resolution", "abc", "datasets[0].resolution must be one or more whole sizes >= 16 "
                                     "pixels (e.g. 480 or [480, 720]), got 'abc'"),
    # once an OverflowError traceback, and the four after it were checked only after the caches
    ("train.device_memory_gib", 1e300, "train.device_memory_gib must be a size in GiB from 0 (the "
                                       "device's own limit) to 1e6, got 1e+300"),
    ("train.memory_plan", "fast", "train.memory_plan must be one of auto, off; got 'fast'"),
    ("train.remat_policy", "most", "train.remat_policy must be one of auto, none, full, "),
    ("train.timestep_sampling", "sigmoid", "train.timestep_sampling must be one of uniform, "
                                           "logit_normal, shift; got 'sigmoid'"),
    ("model.boundary", 1.5, "model.boundary must be in (0, 1): t >= boundary * 1000 is the "
                            "high-noise expert's, got 1.5"),
    ("lora.rank", 0, "lora.rank must be a whole number >= 1, got 0"),
    ("lora.targets", ["ffn.9"], "lora.targets: unknown LoRA target 'ffn.9'"),
])
def test_settings_out_of_range_are_refused_by_name(tmp_path, key, value, message):
  cfg = get_config()
  parts = key.split(".")
  target = cfg.datasets[int(parts[1])] if parts[0] == "datasets" else cfg[parts[0]]
  target[parts[-1]] = value
  with pytest.raises(ValueError) as e:
    train(cfg, tmp_path / "run", progress=False)
  assert str(e.value).startswith(message)
  assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_the_next_run_resumes(tmp_path):
  """/dev/full answers every write with ENOSPC: the metrics file on a disk that just filled up."""
  from wan_jax.files import WriteFailed

  def config():
    cfg = quiet(get_config(), 3)
    cfg.checkpoint.every = 1
    cfg.train.log_every = 2  # step 1 is checkpointed before the first metrics write fails
    cfg.cache.dir = str(tmp_path / "cache")
    return cfg

  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").symlink_to("/dev/full")
  with pytest.raises(WriteFailed) as e:
    train(config(), run, progress=False)
  assert str(e.value) == (
      f"no space left on device while writing the metrics ({run / 'metrics.jsonl'} and "
      f"tensorboard/); free space or fix the folder's permissions, then run again (a run resumes "
      f"from its last checkpoint)")
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1"]
  (run / "metrics.jsonl").unlink()  # space freed
  summary = train(config(), run, progress=False)
  assert summary.resumed_from == 1 and summary.steps == 3

"""The metadata of exported files: ModelSpec fields naming the base model, task and expert, the
global step beside the expert's own count, and the training shape. (Numbered and final files of
a real run agree on the global step: test_launch.py.)"""

from __future__ import annotations

import datetime
import json

from wan_jax.train.outputs.lora_metadata import architecture, base_architecture, weights_metadata

from helpers import get_config


def test_the_architecture_names_the_task_size_and_expert():
  assert base_architecture("wan22_t2v_a14b") == "wan-2.2-t2v-a14b"
  assert base_architecture("wan22_i2v_a14b") == "wan-2.2-i2v-a14b"
  assert base_architecture("tiny") == "wan-2.2-t2v-tiny"
  assert base_architecture("tiny_i2v") == "wan-2.2-i2v-tiny"
  assert architecture("wan22_t2v_a14b", "high", lora=True) == "wan-2.2-t2v-a14b-high-noise/lora"
  assert architecture("wan22_i2v_a14b", "low", lora=True) == "wan-2.2-i2v-a14b-low-noise/lora"
  assert architecture("wan22_t2v_a14b", "low", lora=False) == "wan-2.2-t2v-a14b-low-noise"


def test_metadata_holds_the_global_step_the_expert_count_and_the_training_shape():
  cfg = get_config()
  cfg.datasets[0].trigger_word = "sks ball"
  cfg.datasets[0].resolution = [48, 64]
  meta = weights_metadata(cfg, "low", step=24, expert_step=12,
                          buckets=[(5, 48, 64), (1, 64, 64), (5, 48, 64)], num_items=5,
                          date=datetime.datetime(2026, 1, 2, 3, 4, 5))
  assert all(isinstance(v, str) for v in meta.values())
  assert meta["step"] == "24" and meta["expert_step"] == "12" and meta["expert"] == "low_noise"
  assert meta["modelspec.sai_model_spec"] == "1.0.0"
  assert meta["modelspec.architecture"] == "wan-2.2-t2v-tiny-low-noise/lora"
  assert meta["modelspec.title"] == "demo_lora (low-noise expert)"
  assert meta["modelspec.timestep_range"] == "0,875"
  assert meta["modelspec.resolution"] == "64x64" and meta["modelspec.date"] == "2026-01-02T03:04:05"
  assert meta["modelspec.trigger_phrase"] == "sks ball"
  assert json.loads(meta["resolutions"]) == [48, 64] and json.loads(meta["num_frames"]) == [1, 5]
  assert json.loads(meta["buckets"]) == [[1, 64, 64], [5, 48, 64]] and meta["num_items"] == "5"
  assert json.loads(meta["wan_jax_train_config"])["save"]["name"] == "demo_lora"
  cfg.lora.enabled, cfg.model.arch, cfg.model.boundary = False, "wan22_i2v_a14b", 0.9
  full = weights_metadata(cfg, "high", step=12, expert_step=8)
  assert full["modelspec.architecture"] == "wan-2.2-i2v-a14b-high-noise"
  assert full["modelspec.timestep_range"] == "900,1000" and full["modelspec.resolution"] == "64x64"

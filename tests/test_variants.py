"""The model-variant table: every entry is consistent with its config file, its task, its
checkpoint sizes and the ai-toolkit names that map onto it."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan_jax.config_file import load_config_file
from wan_jax.model.latent_geometry import WAN21, LatentGeometry
from wan_jax.tasks import TASKS
from wan_jax.train.outputs.lora_metadata import architecture
from wan_jax.variants import VARIANTS, by_ai_toolkit, for_task, get_variant

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", sorted(VARIANTS))
def test_each_variant_config_file_names_it_and_takes_its_defaults(arch):
  v = VARIANTS[arch]
  c = load_config_file(str(ROOT / v.config_file))
  assert c.model.arch == arch
  assert c.model.boundary == v.boundary
  assert (c.preview.guidance_low_noise, c.preview.guidance_high_noise) == v.preview.guidance
  assert c.preview.shift == v.preview.shift
  assert v.task in TASKS
  # the transformer reads the VAE's latents (plus the task's condition channels)
  cfg = v.transformer()
  assert cfg.out_channels == v.vae().z_dim == v.geometry.channels
  assert cfg.in_channels == cfg.out_channels + v.task_object.condition_channels
  assert v.tiny == (v.demo_workdir != "") == (v.release == "")
  if v.single_expert:
    assert v.boundary == 0.0 and c.model.train_low_noise is False
  else:
    assert 0.0 < v.boundary < 1.0


def test_ids_are_unique_and_ai_toolkit_names_map_back():
  entries = list(VARIANTS.values())
  assert len({v.modelspec for v in entries}) == len(entries)
  names = [n for v in entries for n in v.ai_toolkit]
  assert len(names) == len(set(names))
  for v in entries:
    for name in v.ai_toolkit:
      assert by_ai_toolkit(name) is v
  assert by_ai_toolkit("flux") is None
  assert for_task("i2v").arch == "wan22_i2v_a14b"
  with pytest.raises(ValueError, match="model.arch must be one of .*got 'wan21'"):
    get_variant("wan21")


def test_modelspec_architecture_names_the_expert_only_when_there_are_two():
  assert architecture("wan22_t2v_a14b", "low", True) == "wan-2.2-t2v-a14b-low-noise/lora"
  assert architecture("wan22_i2v_a14b", "high", False) == "wan-2.2-i2v-a14b-high-noise"
  assert VARIANTS["wan22_t2v_a14b"].file_suffix("high") == "_high_noise"


def test_latent_geometry():
  assert get_variant("wan22_t2v_a14b").geometry == WAN21
  g = LatentGeometry(temporal=4, spatial=16, channels=48)
  assert g.side_multiple == 32 and WAN21.side_multiple == 16
  assert g.grid(121, 704, 1280) == (31, 44, 80)
  assert g.latent_shape(1, 64, 96) == (1, 4, 6, 48)
  assert g.tokens(121, 704, 1280) == 31 * 22 * 40
  assert WAN21.tokens(81, 480, 832) == 21 * 30 * 52
  assert [g.snap_frames(n) for n in (1, 4, 5, 120, 121)] == [1, 1, 5, 117, 121]
  assert g.frames_ok(121) and not g.frames_ok(120)

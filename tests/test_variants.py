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


def test_a_vae_of_another_geometry_is_refused_in_one_line():
  from types import SimpleNamespace

  from wan_jax.model.vae_config import tiny_vae, tiny_vae22
  from wan_jax.train.run.loading import _checked_vae
  five_b, a14b = get_variant("wan22_ti2v_5b"), get_variant("wan22_t2v_a14b")
  wan21, wan22 = SimpleNamespace(config=tiny_vae()), SimpleNamespace(config=tiny_vae22())
  assert _checked_vae(wan22, five_b, "/m/vae") is wan22
  with pytest.raises(ValueError, match=r"^the VAE at /m/vae is a Wan 2.1 VAE \(A14B\): 16 "
                                       r"channels, 8x8 .* Wan 2.2 TI2V-5B needs 48 and 16x16"):
    _checked_vae(wan21, five_b, "/m/vae")
  with pytest.raises(ValueError, match=r"is the Wan 2.2 VAE \(TI2V-5B\)"):
    _checked_vae(wan22, a14b, "/m/vae")


def test_the_variant_checks_of_a_run_config():
  from wan_jax.train.run.validate import check_variant
  c = load_config_file(str(ROOT / "configs/wan22_5b_masked.py:tiny"))
  check_variant(c)
  for key, value, message in (
      ("model.boundary", 0.5, "model.boundary must be 0 for the tiny TI2V demo"),
      ("model.train_low_noise", True, "the tiny TI2V demo has one model: set "),
      ("preview.height", 48, "preview.height must be a multiple of 32 pixels for the tiny TI2V"),
      ("preview.guidance_low_noise", 3.0, r"preview.guidance_low_noise \(3\) and "
                                          r"preview.guidance_high_noise \(5\) differ")):
    bad = load_config_file(str(ROOT / "configs/wan22_5b_masked.py:tiny"))
    section, name = key.split(".")
    bad[section][name] = value
    with pytest.raises(ValueError, match=message):
      check_variant(bad)
  a14b = load_config_file(str(ROOT / "configs/wan22_masked.py:tiny"))
  a14b.preview.height = 48  # a multiple of 16 is enough for the A14B
  check_variant(a14b)
  a14b.model.boundary = 0.0
  with pytest.raises(ValueError, match=r"model.boundary must be in \(0, 1\)"):
    check_variant(a14b)

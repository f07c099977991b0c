"""A whole release (experts, VAE, text encoder, tokenizer) converts with one command, and
components can be added to a converted folder one at a time."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from reference_codecs import make_umt5, make_vae, save_tokenizer, save_umt5_wan_pth, save_vae_pth
from helpers import run_cli

import wan_jax
from wan_jax.weights.components import find_components


@pytest.fixture(scope="session")
def full_release(tmp_path_factory, official_release) -> Path:
  """The official Wan2.2-T2V-A14B layout with every component."""
  root = tmp_path_factory.mktemp("full") / "Wan2.2-T2V-A14B"
  shutil.copytree(official_release, root)
  save_vae_pth(make_vae(base_dim=8, seed=11), root / "Wan2.1_VAE.pth")
  save_umt5_wan_pth(make_umt5(seed=12), root / "models_t5_umt5-xxl-enc-bf16.pth")
  save_tokenizer(root / "google" / "umt5-xxl")
  return root


def test_components_are_found(full_release):
  found = find_components(full_release)
  assert found.found() == ["transformers", "vae", "text_encoder", "tokenizer"]
  assert find_components(full_release / "Wan2.1_VAE.pth").found() == ["vae"]
  assert find_components(full_release / "google" / "umt5-xxl").found() == ["tokenizer"]
  assert find_components(full_release / "high_noise_model").found() == ["transformers"]


@pytest.mark.slow
def test_one_command_converts_everything_and_loads_it(tmp_path, full_release):
  out = tmp_path / "converted"
  result = run_cli(full_release, out)
  assert result.returncode == 0, result.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert sorted(manifest["experts"]) == ["high_noise", "low_noise"]
  assert manifest["vae"]["dtype"] == "float32" and manifest["text_encoder"]["dtype"] == "bfloat16"
  assert manifest["tokenizer"]["path"] == "tokenizer"
  # Converted and on-the-fly loading give the same models.
  video = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, 5, 16, 24, 3)), jnp.float32)
  np.testing.assert_array_equal(wan_jax.load_vae(out).encode(video),
                                wan_jax.load_vae(full_release).encode(video))
  tokenizer = wan_jax.load_tokenizer(out)
  a = wan_jax.encode_prompts(["a dog"], tokenizer, wan_jax.load_text_encoder(out))
  b = wan_jax.encode_prompts(["a dog"], wan_jax.load_tokenizer(full_release),
                             wan_jax.load_text_encoder(full_release))
  np.testing.assert_array_equal(a, b)
  assert wan_jax.load_dual_transformer(out).high_noise.config.num_layers == 2


@pytest.mark.slow
def test_components_can_be_added_one_at_a_time(tmp_path, full_release):
  out = tmp_path / "converted"
  first = run_cli(full_release, out, "--only", "transformers")
  assert first.returncode == 0, first.stderr
  with pytest.raises(ValueError, match="holds no vae"):
    wan_jax.load_vae(out)
  second = run_cli(full_release / "Wan2.1_VAE.pth", out)
  assert second.returncode == 0, second.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert sorted(manifest) == ["experts", "format", "task", "vae"]
  wan_jax.load_vae(out)
  wan_jax.load_transformer(out, expert="low_noise")

  again = run_cli(full_release, out, "--only", "vae,tokenizer")
  assert again.returncode == 2 and "already holds vae" in again.stderr
  replaced = run_cli(full_release, out, "--only", "vae,tokenizer", "--overwrite",
                     "--vae-dtype", "bfloat16")
  assert replaced.returncode == 0, replaced.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["vae"]["dtype"] == "bfloat16" and "tokenizer" in manifest
  assert "high_noise" in manifest["experts"]  # untouched


@pytest.mark.slow
def test_asking_for_what_is_not_there(tmp_path, full_release):
  result = run_cli(full_release / "Wan2.1_VAE.pth", tmp_path / "out", "--only", "text_encoder")
  assert result.returncode == 2 and "has no text_encoder" in result.stderr
  result = run_cli(full_release, tmp_path / "out", "--only", "unet")
  assert result.returncode == 2 and "unknown components" in result.stderr
  empty = tmp_path / "empty"
  empty.mkdir()
  result = run_cli(empty, tmp_path / "out")
  assert result.returncode == 2 and "found no Wan 2.2 component" in result.stderr
  with pytest.raises(ValueError, match="no tokenizer"):
    wan_jax.load_tokenizer(full_release / "high_noise_model")


@pytest.mark.slow
def test_a_failed_component_keeps_what_finished(tmp_path, full_release, monkeypatch):
  """The text encoder fails after its first layers were written (as a Ctrl-C would): the experts
  and the VAE, finished before it, stay listed and loadable; nothing of the text encoder remains."""
  from wan_jax.weights import checkpoint, convert

  real_write = checkpoint.write_expert

  def failing_write(params, path, on_group_saved=None):
    if path.name != "text_encoder":
      return real_write(params, path, on_group_saved)

    def interrupt(group, written):
      if group.startswith("block 1"):
        raise KeyboardInterrupt
    return real_write(params, path, interrupt)

  monkeypatch.setattr(checkpoint, "write_expert", failing_write)
  out = tmp_path / "converted"
  with pytest.raises(KeyboardInterrupt):
    convert.convert_checkpoint(full_release, out, log=lambda _: None)
  assert sorted(p.name for p in out.iterdir()) == ["high_noise", "low_noise", "manifest.json",
                                                   "vae"]
  manifest = json.loads((out / "manifest.json").read_text())
  assert sorted(manifest) == ["experts", "format", "task", "vae"]
  wan_jax.load_dual_transformer(out)
  wan_jax.load_vae(out)
  with pytest.raises(ValueError, match="holds no text_encoder"):
    wan_jax.load_text_encoder(out)
  with pytest.raises(ValueError, match="holds no tokenizer"):
    wan_jax.load_tokenizer(out)  # the manifest decides, not a folder that happens to be there
  monkeypatch.undo()
  rest = run_cli(full_release, out, "--only", "text_encoder,tokenizer")
  assert rest.returncode == 0, rest.stderr
  wan_jax.load_text_encoder(out)


def test_writing_over_a_source_is_refused(tmp_path, full_release):
  root = tmp_path / "diffusers"
  root.mkdir()
  shutil.copytree(full_release / "google" / "umt5-xxl", root / "tokenizer")
  shutil.copy(full_release / "Wan2.1_VAE.pth", root / "Wan2.1_VAE.pth")
  result = run_cli(root, root, "--overwrite")
  assert result.returncode == 2 and "would overwrite the source" in result.stderr
  assert (root / "tokenizer" / "tokenizer.json").is_file()


def test_an_encoders_cache_identity_ignores_the_rest_of_the_release(tmp_path, full_release):
  from wan_jax.data.caches import files_id
  from wan_jax.weights.load_encoders import component_location
  release = tmp_path / "release"
  shutil.copytree(full_release, release)
  assert component_location(release, "vae") == release / "Wan2.1_VAE.pth"
  assert component_location(release, "tokenizer") == release / "google" / "umt5-xxl"
  ids = lambda: [files_id(component_location(release, c))
                 for c in ("vae", "text_encoder", "tokenizer")]
  before = ids()
  expert_file = next((release / "high_noise_model").glob("*.safetensors"))
  os.utime(expert_file, ns=(1, 1))  # re-downloading an expert changes no encoder's identity
  assert ids() == before
  os.utime(release / "Wan2.1_VAE.pth", ns=(1, 1))
  assert ids()[0] != before[0] and ids()[1:] == before[1:]
  out = tmp_path / "converted"
  assert run_cli(release, out, "--only", "vae").returncode == 0
  assert component_location(out, "vae") == out / "vae"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "fp8"])
def test_training_from_a_converted_release(tmp_path, full_release, dtype):
  """The real path users take: convert, then train LoRAs on the converted folder (caches built
  with the converted VAE, umT5 and tokenizer; previews decoded by that VAE); with --dtype fp8,
  on the fp8 base as converted (model.quantize=fp8)."""
  import importlib.util

  from wan_jax.data.demo import make_demo_dataset
  from wan_jax.train.run.trainer import train
  out = tmp_path / "converted"
  assert run_cli(full_release, out, "--num-heads", "4", "--dtype", dtype).returncode == 0
  spec = importlib.util.spec_from_file_location(
      "wan22_masked", Path(__file__).resolve().parents[1] / "configs/wan22_masked.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()  # the real setup, pointed at the converted folder
  media, masks = make_demo_dataset(tmp_path / "data")
  cfg.model.name_or_path = str(out)
  cfg.model.dtype = "float32"
  cfg.model.quantize = "fp8" if dtype == "fp8" else "none"
  cfg.lora.rank, cfg.lora.alpha = 2, 2.0
  cfg.train.steps, cfg.train.switch_boundary_every = 2, 1
  cfg.checkpoint.every, cfg.save.every, cfg.preview.every = 2, 0, 2
  cfg.preview.height, cfg.preview.width, cfg.preview.num_frames = 32, 48, 1
  cfg.preview.num_steps = 1
  cfg.cache.dir = str(tmp_path / "cache")
  ds = cfg.datasets[0]
  ds.folder_path, ds.mask_path, ds.resolution, ds.num_frames = str(media), str(masks), [64], 5
  summary = train(cfg, tmp_path / "run", progress=False)
  assert summary.steps == 2 and summary.skipped_steps == 0
  names = sorted(Path(f).name for f in summary.files)
  assert "wan22_lora_high_noise.safetensors" in names and "wan22_lora_low_noise.safetensors" in names
  assert "step_000002_0.png" in names


def test_each_expert_records_its_task_and_model(tmp_path, official_release):
  """The manifest says which release each expert is ("model"; None at the tests' tiny sizes)."""
  from wan_jax.weights.convert import convert_checkpoint
  from wan_jax.weights.sources import find_experts
  manifest = convert_checkpoint(official_release, tmp_path / "out", only=["transformers"],
                                log=lambda _: None)
  assert {n: (e["task"], e["model"]) for n, e in manifest["experts"].items()} == {
      "high_noise": ("t2v", None), "low_noise": ("t2v", None)}
  # An official expert folder on its own keeps the official label (its config.json says so).
  assert find_experts(official_release / "high_noise_model")[0] == "official"

"""Bad checkpoints give clear errors, and a failed conversion leaves nothing that looks finished."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import wan_jax
from wan_jax.weights.safetensors_reader import CheckpointError, SafetensorsFile
from wan_jax.weights.sources import find_experts

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def one_expert(tmp_path: Path, official_release: Path, edit=None) -> Path:
  """A copy of the high-noise expert as a single file, optionally edited."""
  sd = {}
  for shard in sorted((official_release / "high_noise_model").glob("*.safetensors")):
    sd.update(load_file(str(shard)))
  if edit:
    edit(sd)
  path = tmp_path / "expert.safetensors"
  save_file(sd, str(path))
  return path


def test_unknown_layout(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
    find_experts(tmp_path)
  save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "vae.safetensors"))
  with pytest.raises(CheckpointError, match="unknown transformer key layout"):
    find_experts(tmp_path / "vae.safetensors")


def test_missing_and_unexpected_keys_are_listed(tmp_path, official_release):
  def edit(sd):
    del sd["blocks.1.cross_attn.norm_k.weight"]
    sd["blocks.0.img_emb.proj.weight"] = torch.zeros(3)
  path = one_expert(tmp_path, official_release, edit)
  with pytest.raises(CheckpointError) as e:
    find_experts(path, num_heads=4)
  assert "missing (1): ['blocks.1.cross_attn.norm_k.weight']" in str(e.value)
  assert "unexpected (1): ['blocks.0.img_emb.proj.weight']" in str(e.value)


def test_wrong_shape(tmp_path, official_release):
  def edit(sd):
    sd["blocks.0.self_attn.v.weight"] = torch.zeros(64, 32)
  path = one_expert(tmp_path, official_release, edit)
  with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.v\.weight.*shape"):
    wan_jax.load_transformer(path, num_heads=4)


def test_truncated_file_names_the_file(tmp_path, official_release):
  path = one_expert(tmp_path, official_release)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) - 1000])
  with pytest.raises(CheckpointError, match=rf"{path.name} is truncated"):
    SafetensorsFile(path)
  path.write_bytes(data[:5])
  with pytest.raises(CheckpointError, match="not a safetensors file"):
    SafetensorsFile(path)


def test_missing_shard_in_index(tmp_path, official_release):
  copy = tmp_path / "release"
  shutil.copytree(official_release, copy)
  next((copy / "low_noise_model").glob("*-00002-of-*.safetensors")).unlink()
  with pytest.raises(CheckpointError, match="shard files that are missing"):
    find_experts(copy)


def test_failed_conversion_leaves_no_checkpoint(tmp_path, official_release):
  """The low-noise expert fails after the high-noise one converted: nothing is kept."""
  copy = tmp_path / "release"
  shutil.copytree(official_release, copy)
  folder = copy / "low_noise_model"
  weight_map = json.loads(next(folder.glob("*.index.json")).read_text())["weight_map"]
  bad_key = "blocks.1.ffn.2.weight"
  shard = folder / weight_map[bad_key]
  sd = load_file(str(shard))
  sd[bad_key] = torch.zeros(64, 95)  # right name, wrong shape: found only while converting
  save_file(sd, str(shard))
  out = tmp_path / "out"
  result = run_cli(copy, out)
  assert result.returncode == 2
  assert bad_key in result.stderr and "Traceback" not in result.stderr
  assert "high_noise: saved block 1" in result.stdout  # the first expert had been written
  assert not (out / "manifest.json").exists()
  assert sorted(p.name for p in out.iterdir()) == []
  with pytest.raises(CheckpointError):
    wan_jax.load_transformer(out)


@pytest.mark.slow
def test_existing_output_needs_overwrite(tmp_path, diffusers_release):
  out = tmp_path / "out"
  assert run_cli(diffusers_release / "transformer", out, "--dtype", "float32").returncode == 0
  again = run_cli(diffusers_release / "transformer", out)
  assert again.returncode == 2 and "--overwrite" in again.stderr
  replaced = run_cli(diffusers_release / "transformer", out, "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert list(manifest["experts"]) == ["transformer"]
  assert manifest["experts"]["transformer"]["dtype"] == "bfloat16"
  assert manifest["experts"]["transformer"]["config"]["num_heads"] == 4


def test_asking_for_a_missing_expert(tmp_path, diffusers_release):
  with pytest.raises(ValueError, match="holds experts"):
    wan_jax.load_transformer(diffusers_release, dtype="float32")
  with pytest.raises(ValueError, match="no expert 'middle'"):
    wan_jax.load_transformer(diffusers_release, expert="middle")


@pytest.mark.slow
def test_a_file_that_is_not_a_checkpoint_is_refused_with_a_clear_error(tmp_path):
  path = tmp_path / "model.pth"
  path.write_bytes(b"not really")
  result = run_cli(path, tmp_path / "out")
  assert result.returncode == 2 and "not a PyTorch checkpoint" in result.stderr
  assert "Traceback" not in result.stderr
  other = tmp_path / "model.ckpt.txt"
  other.write_text("hello")
  result = run_cli(other, tmp_path / "out")
  assert result.returncode == 2 and "expected .safetensors or a torch.save file" in result.stderr


def test_a_killed_conversion_is_cleaned_up_by_the_next_one(tmp_path, diffusers_release):
  """A conversion killed mid-expert leaves only Orbax's partial-save folder and no manifest, so
  the folder is not taken for a conversion (nor anything else loadable); the next run removes it."""
  import orbax.checkpoint.experimental.v1 as ocp

  from wan_jax.weights import checkpoint
  out = tmp_path / "out"
  out.mkdir()
  # What a conversion killed after its first group leaves behind.
  ocp.partial.save(out / "transformer", {"patch_embedding": {"bias": np.zeros(3, np.float32)}})
  assert checkpoint.unfinished(out / "transformer")
  assert checkpoint.read_manifest(out) is None
  with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
    wan_jax.load_transformer(out)
  result = run_cli(diffusers_release / "transformer", out, "--dtype", "float32")
  assert result.returncode == 0, result.stderr
  assert "did not finish" in result.stdout
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "transformer"]
  wan_jax.load_transformer(out)


@pytest.mark.slow
def test_relative_and_odd_paths(tmp_path, diffusers_release, monkeypatch):
  import jax.numpy as jnp
  monkeypatch.chdir(tmp_path)
  result = subprocess.run([sys.executable, str(REPO / "convert" / "wan22.py"),
                           str(diffusers_release / "transformer"), "rel out"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  model = wan_jax.load_transformer("rel out", dtype=jnp.float32)  # relative path, jnp dtype
  assert model.config.param_dtype == "float32"
  bad = run_cli(diffusers_release / "transformer", tmp_path / "out[1]")
  assert bad.returncode == 2 and "cannot contain" in bad.stderr and "Traceback" not in bad.stderr
  assert not (tmp_path / "out[1]").exists()


def test_cli_reports_bad_settings_without_a_traceback(tmp_path, diffusers_release):
  result = run_cli(diffusers_release / "transformer", tmp_path / "out", "--num-heads", "3")
  assert result.returncode == 2
  assert "not divisible" in result.stderr and "Traceback" not in result.stderr


def test_bad_index_json(tmp_path, official_release):
  copy = tmp_path / "release"
  shutil.copytree(official_release, copy)
  next((copy / "high_noise_model").glob("*.index.json")).write_text("{oops")
  with pytest.raises(CheckpointError, match="not valid JSON"):
    find_experts(copy)


def _edit_header(path: Path, edit) -> Path:
  """Rewrites a safetensors file's header in place (the data area stays as it was)."""
  data = path.read_bytes()
  n = struct.unpack("<Q", data[:8])[0]
  header = json.loads(data[8:8 + n])
  blob = edit(header)
  blob = blob if isinstance(blob, bytes) else json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
  return path


def _shift(header: dict, key: str, by: int) -> None:
  header[key]["data_offsets"] = [x + by for x in header[key]["data_offsets"]]


def _first_and_last(header: dict) -> tuple[str, str]:
  tensors = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
  return tensors[0][1], tensors[-1][1]


@pytest.mark.parametrize("case", ["negative_offsets", "overlapping_offsets", "list_header",
                                  "deflate_bomb"])
def test_cli_refuses_damaged_files_in_one_line(tmp_path, official_release, case):
  """Damaged expert files that used to convert with rc 0 or end in a traceback, and a .pth
  whose data.pkl inflates past the cap (4 MiB; this one 5 MiB in a ~6 KB file)."""
  tensor = None
  if case == "deflate_bomb":
    torch.save({"encoder.conv1.weight": torch.ones(2)}, tmp_path / "plain.pth")
    path = tmp_path / "vae.pth"
    with zipfile.ZipFile(tmp_path / "plain.pth") as zin, zipfile.ZipFile(path, "w") as zout:
      for info in zin.infolist():
        pkl = info.filename.endswith("/data.pkl")
        bomb = pickle.dumps({"note": "x" * (5 << 20)}, protocol=2)  # valid, but no tensors
        zout.writestr(info.filename, bomb if pkl else zin.read(info.filename),
                      zipfile.ZIP_DEFLATED if pkl else zipfile.ZIP_STORED)
  else:
    path = one_expert(tmp_path, official_release)
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    first, last = _first_and_last(header)
    tensor = {"negative_offsets": first, "overlapping_offsets": last}.get(case)
    _edit_header(path, {"negative_offsets": lambda h: _shift(h, first, -8),
                        "overlapping_offsets": lambda h: _shift(h, last, -4),
                        "list_header": lambda h: b"[1,2,3]"}[case])
  result = run_cli(path, tmp_path / "out")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith(f"error: {path}")
  if tensor:
    assert repr(tensor) in result.stderr
  if case == "deflate_bomb":
    assert "decompression bomb" in result.stderr
  assert not (tmp_path / "out").exists()


def test_a_file_with_no_known_tensors_is_named(tmp_path):
  from wan_jax.weights.convert import convert_checkpoint
  path = tmp_path / "empty.safetensors"
  save_file({}, str(path))
  with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: neither a Wan"):
    convert_checkpoint(path, tmp_path / "out")


def test_one_detection_interface_names_every_component_and_naming():
  from wan_jax.weights.components import detect
  from wan_jax.weights.layouts import Layout

  cases = {
      ("patch_embedding.weight", "head.head.weight"): Layout("transformer", "original"),
      ("model.diffusion_model.patch_embedding.weight", "model.diffusion_model.head.head.weight"):
          Layout("transformer", "original", "model.diffusion_model."),
      ("patch_embedding.weight", "proj_out.weight"): Layout("transformer", "diffusers"),
      ("encoder.conv1.weight", "conv1.weight"): Layout("vae", "original"),
      ("encoder.conv_in.weight", "quant_conv.weight"): Layout("vae", "diffusers"),
      ("token_embedding.weight", "blocks.0.attn.q.weight"): Layout("text_encoder", "wan"),
      ("encoder.block.0.layer.0.SelfAttention.q.weight",): Layout("text_encoder", "hf"),
  }
  for keys, want in cases.items():
    assert detect(keys) == want, keys
  with pytest.raises(CheckpointError, match="neither a Wan transformer, a Wan VAE nor a umT5"):
    detect(["unet.conv_in.weight"])

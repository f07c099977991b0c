"""Loading an fp8 base (model.quantize=fp8): a folder converted with --dtype fp8, a bf16 folder or
a PyTorch checkpoint quantised block by block as it is read, and a ComfyUI fp8 file whose own
fp8 values are kept; each bit for bit against quantising the whole loaded model
(load.quantize_model, the reference)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file

import wan_jax
from wan_jax.model.quantize import quantize_numpy
from wan_jax.weights import checkpoint, fp8
from wan_jax.weights.convert import convert_checkpoint
from wan_jax.weights.load import assemble, load_transformer, quantize_model
from wan_jax.weights.safetensors_reader import CheckpointError, SafetensorsFile

HEADS = 4  # the reference model's (its dim / 128 would be 0)
KERNELS = {"self_attn.q": ("self_attn", "q"), "cross_attn.v": ("cross_attn", "v"),
           "ffn.0": ("ffn_in",), "ffn.2": ("ffn_out",)}  # original module -> our path (a sample)


def leaves(model: nnx.Module) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(nnx.state(model).to_pure_dict())[0]}


def assert_bitwise_equal(a: nnx.Module, b: nnx.Module) -> None:
  la, lb = leaves(a), leaves(b)
  assert la.keys() == lb.keys()
  for name in la:
    assert la[name].dtype == lb[name].dtype, name
    assert la[name].tobytes() == lb[name].tobytes(), name
  assert any(v.dtype == ml_dtypes.float8_e4m3fn for v in la.values())


def quantised_after_load(path: Path, expert: str | None) -> nnx.Module:
  """The reference: the whole unquantised model loaded, then quantised."""
  model = load_transformer(path, expert=expert, num_heads=HEADS)
  return quantize_model(model, model.config.replace(quantize="fp8"))


def kernel(model: nnx.Module, path: tuple[str, ...]) -> nnx.Module:
  module = model.blocks
  for part in path:
    module = getattr(module, part)
  return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official_release) -> dict[str, Path]:
  root = tmp_path_factory.mktemp("fp8_conversions")
  quiet = lambda line: None  # noqa: E731
  convert_checkpoint(official_release, root / "bf16", "bfloat16", log=quiet)
  convert_checkpoint(official_release, root / "fp8", "fp8", log=quiet)
  return {"release": official_release, "bf16": root / "bf16", "fp8": root / "fp8"}


def test_an_fp8_conversion_and_quantising_on_load_equal_quantising_the_loaded_model(converted):
  manifest = checkpoint.read_manifest(converted["fp8"])
  for expert in ("high_noise", "low_noise"):
    entry = manifest["experts"][expert]
    assert (entry["dtype"], entry["quantize"]) == ("bfloat16", "fp8")
  stored = dict(checkpoint.read_expert_blocks(converted["fp8"] / "high_noise"))
  assert stored["blocks.1.ffn_in.kernel"].dtype == ml_dtypes.float8_e4m3fn
  assert stored["blocks.1.ffn_in.kernel_scale"].dtype == np.float32
  assert stored["blocks.1.modulation"].dtype == ml_dtypes.bfloat16
  want = quantised_after_load(converted["bf16"], "high_noise")
  for source in ("fp8", "bf16", "release"):  # as stored; quantised as read; converted as read
    assert_bitwise_equal(load_transformer(converted[source], expert="high_noise",
                                          num_heads=HEADS, quantize="fp8"), want)
  assert "quantize" not in checkpoint.read_manifest(converted["bf16"])["experts"]["high_noise"]


def test_an_fp8_folder_loads_only_as_fp8_and_fp8_is_for_the_experts_only(converted, tmp_path):
  with pytest.raises(CheckpointError, match=r"^[^\n]*holds an fp8 base[^\n]*model\.quantize=fp8"
                                            r"[^\n]*$"):
    load_transformer(converted["fp8"], expert="high_noise", num_heads=HEADS)
  for flag in ("vae_dtype", "text_encoder_dtype"):
    with pytest.raises(ValueError, match=r"^--[a-z-]+ fp8: fp8 is for the transformer experts "
                                         r"only \(--dtype fp8\)[^\n]*$"):
      convert_checkpoint(converted["release"], tmp_path / "out", "fp8", **{flag: "fp8"})
  assert not (tmp_path / "out").exists()
  # A float kernel is never stored in an fp8 leaf without its scales.
  cfg = wan_jax.WanConfig.from_arch_dict(
      checkpoint.read_manifest(converted["bf16"])["experts"]["high_noise"]["config"],
      quantize="fp8")
  with pytest.raises(CheckpointError, match="float8_e4m3fn leaf"):
    assemble(cfg, checkpoint.read_expert_blocks(converted["bf16"] / "high_noise"))


def test_quantising_on_load_reads_one_block_then_quantises_it(converted, monkeypatch):
  """Reads and quantisations interleave block by block: the whole bf16 expert is never in host
  memory (its peak is measured in docs/training.md, "An fp8 base")."""
  events: list[str] = []
  real_ocp, real_quantize = checkpoint._ocp(), fp8.quantize_numpy

  class Spy:
    def __getattr__(self, name):
      return getattr(real_ocp, name)

    def load_pytree(self, path, group):
      blocks = group.get("blocks", {})
      events.append(f"read block {next(iter(blocks))}" if blocks else "read top level")
      return real_ocp.load_pytree(path, group)

  monkeypatch.setattr(checkpoint, "_ocp", Spy)
  monkeypatch.setattr(fp8, "quantize_numpy", lambda k: events.append("quantise") or
                      real_quantize(k))
  load_transformer(converted["bf16"], expert="low_noise", num_heads=HEADS, quantize="fp8")
  assert events == ["read top level", "read block 0", *["quantise"] * 10, "read block 1",
                    *["quantise"] * 10]


def fp8_scaled(high_ref, tmp_path: Path, edit=None) -> Path:
  """A ComfyUI fp8_scaled file (per-tensor scales), optionally edited (torch tensors)."""
  from reference import save_comfyui_fp8_scaled
  path = tmp_path / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
  save_comfyui_fp8_scaled(high_ref, path)
  if edit:
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))
  return path


def test_a_comfyui_fp8_file_keeps_its_own_fp8_values(tmp_path, high_ref):
  path = fp8_scaled(high_ref, tmp_path)
  model = load_transformer(path, num_heads=HEADS, quantize="fp8")
  dequantised = load_transformer(path, "float32", num_heads=HEADS)  # weight * scale_weight
  file = SafetensorsFile(path)
  for original, ours in KERNELS.items():
    for i in range(2):
      key = f"model.diffusion_model.blocks.{i}.{original}"
      values, scale = file.read(f"{key}.weight"), file.read(f"{key}.scale_weight")
      linear = kernel(model, ours)
      assert np.asarray(linear.kernel[...][i]).tobytes() == values.T.tobytes()
      assert np.all(np.asarray(linear.kernel_scale[...][i]) == scale.astype(np.float32))
      np.testing.assert_array_equal(np.asarray(linear.weight(np.float32)[i]),
                                    np.asarray(kernel(dequantised, ours).kernel[...][i]))
  # Converted with --dtype fp8, the same values.
  convert_checkpoint(path, tmp_path / "converted", "fp8", num_heads=HEADS, log=lambda line: None)
  assert_bitwise_equal(load_transformer(tmp_path / "converted", quantize="fp8"), model)


def test_comfyui_scales_that_do_not_fit_ours_are_quantised_again_and_said_once(
    tmp_path, high_ref, caplog):
  """Per output channel ([out, 1]): kept as well. Per input channel ([1, in]: a scale that
  changes inside our groups): dequantised, quantised again, one log line."""
  def edit(sd):
    key = "model.diffusion_model.blocks.0.self_attn.q"
    w = sd[f"{key}.weight"].float() * sd[f"{key}.scale_weight"]
    per_out = w.abs().amax(dim=1, keepdim=True) / 448.0
    sd[f"{key}.weight"] = (w / per_out).to(torch.float8_e4m3fn)
    sd[f"{key}.scale_weight"] = per_out
    key = "model.diffusion_model.blocks.1.ffn.0"
    w = sd[f"{key}.weight"].float() * sd[f"{key}.scale_weight"]
    per_in = w.abs().amax(dim=0, keepdim=True) / 448.0
    sd[f"{key}.weight"] = (w / per_in).to(torch.float8_e4m3fn)
    sd[f"{key}.scale_weight"] = per_in

  path = fp8_scaled(high_ref, tmp_path, edit)
  with caplog.at_level(logging.INFO, logger="wan_jax.weights.sources"):
    model = load_transformer(path, num_heads=HEADS, quantize="fp8")
  lines = [r.getMessage() for r in caplog.records if "fp8 values" in r.getMessage()]
  assert len(lines) == 1 and "kept the file's fp8 values of 19 kernels" in lines[0], lines
  assert "requantised 1 from their dequantised weights (scale_weight of shape (1, 64))" in lines[0]
  file = SafetensorsFile(path)
  key = "model.diffusion_model.blocks.0.self_attn.q"
  q = kernel(model, ("self_attn", "q"))
  assert np.asarray(q.kernel[...][0]).tobytes() == file.read(f"{key}.weight").T.tobytes()
  np.testing.assert_array_equal(np.asarray(q.kernel_scale[...][0]),
                                np.broadcast_to(file.read(f"{key}.scale_weight").T, (1, 64)))
  key = "model.diffusion_model.blocks.1.ffn.0"
  w = file.read(f"{key}.weight").astype(np.float32) * file.read(f"{key}.scale_weight")
  want_q, want_scale = quantize_numpy(w.astype(ml_dtypes.bfloat16).T)
  ffn = kernel(model, ("ffn_in",))
  assert np.asarray(ffn.kernel[...][1]).tobytes() == want_q.tobytes()
  np.testing.assert_array_equal(np.asarray(ffn.kernel_scale[...][1]), want_scale)

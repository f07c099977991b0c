"""LoRA adapters and the files users take away, read back by diffusers, by ComfyUI's merge rule,
by diffusers' single-file converter and by our own loaders."""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from flax import nnx
from reference import (
  TINY,
  original_state_dict,
  random_inputs,
  reference_forward,
  rel_error,
)
from safetensors import safe_open
from safetensors.torch import load_file

import wan_jax
from wan_jax.model.layers import Linear, LoRAParam
from wan_jax.weights import export
from wan_jax.model import lora

# Written out here, not taken from the code under test.
NAMES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
         "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
RANK, ALPHA = 4, 1.5  # scale 0.375: alpha != rank, and < 0.5 so diffusers splits it over A and B
DIM, FFN = TINY["num_attention_heads"] * TINY["attention_head_dim"], TINY["ffn_dim"]
IN_OUT = {**{n: (DIM, DIM) for n in NAMES[:8]}, "ffn.0": (DIM, FFN), "ffn.2": (FFN, DIM)}
INPUTS = random_inputs(seed=11, frames=3, height=6, width=10)  # odd frames, H != W


def forward(model) -> np.ndarray:
  return np.asarray(model(*map(jnp.asarray, INPUTS)))


def load_base(release):
  return wan_jax.load_transformer(release, expert="high_noise", dtype="float32")


def train(model, seed: int = 0) -> None:
  """LoRA with random, nonzero A and B: a stand-in for a trained adapter."""
  lora.add_lora(model, RANK, ALPHA, seed=seed)
  rng = np.random.default_rng(seed)
  for name in NAMES:
    b = lora.block_linear(model, name).lora_b
    b.value = jnp.asarray(rng.standard_normal(b.shape).astype(np.float32) * 0.3)


@pytest.fixture(scope="module")
def trained(diffusers_release, tmp_path_factory):
  """(model with a trained LoRA, its output, the base output, its LoRA file in fp32)."""
  model = load_base(diffusers_release)
  base_out = forward(model)
  train(model)
  path = tmp_path_factory.mktemp("lora") / "my_lora.safetensors"
  export.save_lora(model, path, dtype="float32", metadata={"step": "123"})
  return model, forward(model), base_out, path


def test_default_targets_are_the_ten_block_linears():
  assert lora.DEFAULT_TARGETS == NAMES
  assert lora.resolve_targets("self_attn.*") == NAMES[:4]
  assert lora.resolve_targets(["*.o", "ffn.2", "self_attn.o"]) == (
      "self_attn.o", "cross_attn.o", "ffn.2")


def test_zero_b_is_exactly_the_base_model(diffusers_release):
  model = load_base(diffusers_release)
  before = forward(model)
  lora.add_lora(model, RANK, ALPHA)
  np.testing.assert_array_equal(forward(model), before)
  b = model.blocks.ffn_in.lora_b
  b.value = jnp.full(b.shape, 0.1, jnp.float32)
  assert rel_error(forward(model), before) > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scale_is_alpha_over_rank(dtype):
  lin = Linear(6, 5, param_dtype=jnp.dtype(dtype), compute_dtype=jnp.dtype(dtype),
               rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 6), jnp.float32)
  no_lora = np.asarray(lin(x), np.float64)
  lin.add_lora(3, 2.0, jax.random.key(2))
  assert lin.lora_a.value.dtype == lin.lora_b.value.dtype == jnp.float32  # fp32 over any base
  np.testing.assert_array_equal(np.asarray(lin(x), np.float64), no_lora)
  lin.lora_b.value = jax.random.normal(jax.random.key(3), lin.lora_b.shape)
  a, b = np.asarray(lin.lora_a.value, np.float64), np.asarray(lin.lora_b.value, np.float64)
  want = np.asarray(x, np.float64) @ a @ b * (2.0 / 3)
  delta = np.asarray(lin(x), np.float64) - no_lora
  tol = 1e-6 if dtype == "float32" else 3e-2
  assert rel_error(delta, want) < tol
  lin.lora_alpha = 4.0
  assert rel_error(np.asarray(lin(x), np.float64) - no_lora, 2 * want) < tol
  assert lin(x).dtype == jnp.dtype(dtype)


@pytest.mark.slow
def test_lora_state_is_exactly_the_adapters():
  cfg = wan_jax.tiny(num_layers=3)
  model = wan_jax.WanTransformer(cfg, rngs=nnx.Rngs(0))
  base_params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  lora.add_lora(model, RANK, ALPHA)
  adapters = dict(nnx.to_flat_state(nnx.state(model, LoRAParam)))
  assert len(adapters) == 10 * 2
  ours = {"ffn.0": "ffn_in", "ffn.2": "ffn_out"}
  sizes = {**{n: (cfg.dim, cfg.dim) for n in NAMES[:8]},
           "ffn.0": (cfg.dim, cfg.ffn_dim), "ffn.2": (cfg.ffn_dim, cfg.dim)}
  total = 0
  for name in NAMES:
    path = ("blocks", *ours.get(name, name).split("."))
    fan_in, fan_out = sizes[name]
    assert adapters[(*path, "lora_a")].shape == (3, fan_in, RANK)
    assert adapters[(*path, "lora_b")].shape == (3, RANK, fan_out)
    total += 3 * RANK * (fan_in + fan_out)
  assert lora.count_lora_params(model) == total
  frozen = dict(nnx.to_flat_state(nnx.state(model, lora.FROZEN)))
  assert set(frozen) == {p for p, _ in base_params} and not set(frozen) & set(adapters)
  _, trainable, rest = lora.split_lora(model)
  assert len(jax.tree_util.tree_leaves(trainable)) == 20
  assert len(jax.tree_util.tree_leaves(rest)) == len(base_params)


def test_targets_subset_and_errors():
  model = wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))
  lora.add_lora(model, 2, 2.0, targets="self_attn.*")
  assert lora.lora_targets(model) == NAMES[:4]
  assert model.blocks.cross_attn.q.lora_alpha is None
  with pytest.raises(ValueError, match="already has LoRA"):
    lora.add_lora(model, 2, 2.0, targets=["self_attn.q"])
  with pytest.raises(ValueError, match="unknown LoRA target 'self_attn.x'"):
    lora.add_lora(model, 2, 2.0, targets=["self_attn.x"])
  with pytest.raises(ValueError, match="unknown LoRA target 'ffn_in'"):
    lora.add_lora(model, 2, 2.0, targets=["ffn_in"])
  for rank in (0, -1, 1.5):
    with pytest.raises(ValueError, match="rank"):
      lora.add_lora(model, rank, 2.0, targets=["ffn.0"])
  with pytest.raises(ValueError, match="alpha"):
    lora.add_lora(model, 2, 0.0, targets=["ffn.0"])
  assert lora.lora_targets(model) == NAMES[:4]  # nothing half-added by the failures


def test_lora_file_keys_are_the_comfyui_layout(trained):
  _, _, _, path = trained
  with safe_open(str(path), "pt") as f:
    keys, meta = set(f.keys()), f.metadata()
    want = set()
    for i in range(TINY["num_layers"]):
      for name in NAMES:
        module = f"diffusion_model.blocks.{i}.{name}"
        want |= {f"{module}.lora_A.weight", f"{module}.lora_B.weight", f"{module}.alpha"}
        fan_in, fan_out = IN_OUT[name]
        assert tuple(f.get_tensor(f"{module}.lora_A.weight").shape) == (RANK, fan_in)
        assert tuple(f.get_tensor(f"{module}.lora_B.weight").shape) == (fan_out, RANK)
        alpha = f.get_tensor(f"{module}.alpha")
        assert alpha.shape == () and alpha.item() == ALPHA
  assert keys == want
  assert meta["step"] == "123" and meta["lora_rank"] == str(RANK)
  assert float(meta["lora_alpha"]) == ALPHA and json.loads(meta["lora_targets"]) == list(NAMES)


def test_diffusers_loads_the_lora_with_the_same_output(trained, high_ref):
  _, ours, base_out, path = trained
  assert rel_error(ours, base_out) > 1e-2  # the adapter matters
  pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                     transformer=copy.deepcopy(high_ref))
  pipe.load_lora_weights(str(path))
  assert rel_error(reference_forward(pipe.transformer, *INPUTS), ours) < 1e-5


def test_comfyui_merge_rule_gives_the_same_model(trained, high_ref):
  """ComfyUI patches W [out, in] += alpha / rank * up @ down, rank = rows of lora_A (down), for
  the weight named by the LoRA module without `diffusion_model.`."""
  _, ours, _, path = trained
  weights = original_state_dict(high_ref)
  file = load_file(str(path))
  modules = {k.rsplit(".", 2)[0] for k in file if k.endswith(".lora_A.weight")}
  for module in modules:
    key = module.removeprefix("diffusion_model.") + ".weight"
    down, up = file[f"{module}.lora_A.weight"], file[f"{module}.lora_B.weight"]
    weights[key] = weights[key] + file[f"{module}.alpha"].item() / down.shape[0] * (up @ down)
  merged = WanTransformer3DModel(**TINY).eval()
  merged.load_state_dict(convert_wan_transformer_to_diffusers(weights), strict=True)
  assert rel_error(reference_forward(merged, *INPUTS), ours) < 1e-5


def test_save_full_round_trips_with_lora_merged(trained, tmp_path):
  model, ours, _, _ = trained
  path = export.save_full(model, tmp_path / "finetuned.safetensors", dtype="float32")
  again = wan_jax.load_transformer(path, dtype="float32", num_heads=TINY["num_attention_heads"])
  assert lora.lora_targets(again) == ()
  assert rel_error(forward(again), ours) < 1e-5
  theirs = WanTransformer3DModel(**TINY).eval()
  theirs.load_state_dict(convert_wan_transformer_to_diffusers(load_file(str(path))), strict=True)
  assert rel_error(reference_forward(theirs, *INPUTS), ours) < 1e-5


def test_save_full_without_lora_is_the_original_checkpoint(diffusers_release, high_ref,
                                                          tmp_path):
  model = load_base(diffusers_release)
  want = original_state_dict(high_ref)
  got = load_file(str(export.save_full(model, tmp_path / "f32.safetensors", dtype="float32")))
  assert set(got) == set(want)
  for key, value in want.items():
    assert torch.equal(got[key], value), key
  path = export.save_full(model, tmp_path / "comfy.safetensors",
                          prefix="model.diffusion_model.")  # default dtype: bfloat16
  got = load_file(str(path))
  assert set(got) == {f"model.diffusion_model.{k}" for k in want}
  for key, value in want.items():  # the reference weights are bf16 values: no rounding
    assert torch.equal(got[f"model.diffusion_model.{key}"], value.to(torch.bfloat16)), key
  with pytest.raises(ValueError, match="prefix"):
    export.save_full(model, tmp_path / "x.safetensors", prefix="unet.")


def lora_arrays(model) -> dict:
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}


def test_load_lora_round_trip(trained, diffusers_release, tmp_path):
  model, _, _, path = trained
  assert export.read_lora_config(path) == {
      "targets": NAMES, "rank": RANK, "alpha": ALPHA, "num_layers": TINY["num_layers"]}
  other = load_base(diffusers_release)
  lora.add_lora(other, RANK, ALPHA, seed=5)
  export.load_lora(other, path)
  want, got = lora_arrays(model), lora_arrays(other)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])
  # The default file dtype is bfloat16: loading gives the bf16-rounded adapter, in fp32.
  bf16 = export.save_lora(model, tmp_path / "bf16.safetensors")
  export.load_lora(other, bf16)
  for key, value in lora_arrays(other).items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, want[key].astype(jnp.bfloat16).astype(np.float32))


def test_load_lora_mismatches_are_errors(trained):
  _, _, _, path = trained
  make = lambda: wan_jax.WanTransformer(wan_jax.tiny(), rngs=nnx.Rngs(0))  # same shapes as TINY
  with pytest.raises(ValueError, match="no LoRA adapters.*'rank': 4"):
    export.load_lora(make(), path)
  cases = [(2, ALPHA, NAMES, "rank 4"), (RANK, 3.0, NAMES, "alpha"),
           (RANK, ALPHA, "self_attn.*", "unexpected")]
  for rank, alpha, targets, message in cases:
    model = make()
    lora.add_lora(model, rank, alpha, targets)
    before = lora_arrays(model)
    with pytest.raises(ValueError, match=message):
      export.load_lora(model, path)
    after = lora_arrays(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # untouched


def test_writes_are_atomic_and_metadata_checked(trained, tmp_path, monkeypatch):
  model = trained[0]
  path = tmp_path / "lora.safetensors"
  export.save_lora(model, path, dtype="float32")
  first = path.read_bytes()
  with pytest.raises(TypeError, match="str to str"):
    export.save_lora(model, path, metadata={"step": 5})
  with pytest.raises(ValueError, match="written by wan_jax"):
    export.save_lora(model, path, metadata={"lora_rank": "8"})

  def crash(fd):
    raise OSError("disk gone")

  monkeypatch.setattr(export.os, "fsync", crash)
  with pytest.raises(OSError, match="disk gone"):
    export.save_lora(model, path)  # bfloat16: different bytes, had it gone through
  with pytest.raises(OSError, match="disk gone"):
    export.save_full(model, tmp_path / "full.safetensors")
  assert path.read_bytes() == first
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]

"""Parity of our umT5 encoder with transformers' UMT5EncoderModel, through both key layouts."""

from __future__ import annotations

import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from reference_codecs import UMT5_TINY, make_umt5, umt5_wan_key
from transformers import UMT5Config as HFConfig
from transformers import UMT5EncoderModel
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from wan_jax.model.umt5 import relative_bucket, umt5_tiny
from wan_jax.weights import umt5_keys
from wan_jax.weights.safetensors_reader import CheckpointError

# heads * d_kv (40) != d_model (48) != d_ff (72), so a transposed tensor cannot go unnoticed.
TINY = UMT5_TINY
LENGTHS = (161, 23, 1)  # true prompt lengths; 161 > 128 reaches the clamped buckets
SEQ = 170

class DictStore:
  """The TensorStore interface over a dict of numpy arrays."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.tensors = tensors

  def keys(self) -> list[str]:
    return list(self.tensors)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.tensors[key].shape)

  def read(self, key: str) -> np.ndarray:
    return self.tensors[key].copy()


@pytest.fixture(scope="module")
def reference() -> UMT5EncoderModel:
  """Random weights with non-trivial norm gains and bias tables."""
  model = make_umt5(0, norm_spread=0.3, weight_noise=0.2, attn_implementation="eager")
  return model


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  ids = np.zeros((len(LENGTHS), SEQ), np.int32)
  mask = np.zeros((len(LENGTHS), SEQ), np.int32)
  for b, n in enumerate(LENGTHS):
    ids[b, :n] = rng.integers(1, TINY["vocab_size"], n)
    mask[b, :n] = 1
  return ids, mask


@pytest.fixture(scope="module")
def expected(reference, inputs) -> np.ndarray:
  ids, mask = inputs
  with torch.no_grad():
    out = reference(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  return out.numpy()


def hf_tensors(model: UMT5EncoderModel) -> dict[str, np.ndarray]:
  """The HF state dict; it holds the tied encoder.embed_tokens.weight next to shared.weight."""
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def wan_tensors(model: UMT5EncoderModel) -> dict[str, np.ndarray]:
  sd = hf_tensors(model)
  del sd["encoder.embed_tokens.weight"]
  return {umt5_wan_key(k): v for k, v in sd.items()}


def run_ours(tensors: dict[str, np.ndarray], inputs, dtype) -> np.ndarray:
  name = np.dtype(dtype).name
  store = DictStore(tensors)
  shapes = {k: v.shape for k, v in tensors.items()}
  layout = umt5_keys.detect_layout(shapes)
  cfg = umt5_keys.infer_config(shapes, layout, param_dtype=name, compute_dtype=name)
  encoder = umt5_keys.build_encoder(cfg, dict(umt5_keys.convert(store, dtype)))
  ids, mask = inputs
  out = encoder(jnp.asarray(ids), jnp.asarray(mask))
  assert out.dtype == jnp.float32 and out.shape == (len(LENGTHS), SEQ, TINY["d_model"])
  return np.asarray(out)


def max_rel_error(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
  """max |got - want| / max |want| over the real (unpadded) tokens."""
  keep = mask.astype(bool)
  got, want = got[keep].astype(np.float64), want[keep].astype(np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def test_relative_buckets_match_transformers():
  attn = UMT5Attention(HFConfig(**TINY), has_relative_attention_bias=True)
  relative = np.arange(-1100, 1101)
  want = attn._relative_position_bucket(torch.from_numpy(relative)).numpy()
  got = relative_bucket(relative, TINY["relative_attention_num_buckets"],
                        TINY["relative_attention_max_distance"])
  bad = relative[got != want]
  assert bad.size == 0, f"buckets differ at relative positions {bad[:20]}"
  assert set(np.unique(got)) == set(range(32)) - {16}  # 16 would be "+0": that is bucket 0


@pytest.mark.parametrize("layout", ["hf", "wan"])
def test_fp32_parity(reference, inputs, expected, layout):
  tensors = hf_tensors(reference) if layout == "hf" else wan_tensors(reference)
  assert umt5_keys.detect_layout(tensors) == layout
  got = run_ours(tensors, inputs, np.float32)
  error = max_rel_error(got, expected, inputs[1])
  print(f"{layout} fp32 max rel error {error:.2e}")
  assert error < 1e-5


def test_bf16_parity(reference, inputs, expected):
  got = run_ours(hf_tensors(reference), inputs, ml_dtypes.bfloat16)
  error = max_rel_error(got, expected, inputs[1])
  print(f"bf16 max rel error {error:.2e}")
  assert error < 2e-2


@pytest.mark.parametrize("layout", ["hf", "wan"])
def test_infer_config(reference, layout):
  tensors = hf_tensors(reference) if layout == "hf" else wan_tensors(reference)
  shapes = {k: v.shape for k, v in tensors.items()}
  cfg = umt5_keys.infer_config(shapes, layout, param_dtype="float32",
                               compute_dtype="float32")
  assert cfg == umt5_tiny()


def test_hf_file_with_only_the_tied_embedding_name(reference, inputs, expected):
  tensors = hf_tensors(reference)
  del tensors["shared.weight"]
  assert max_rel_error(run_ours(tensors, inputs, np.float32), expected, inputs[1]) < 1e-5


def test_unknown_layout():
  with pytest.raises(ValueError, match="unknown umT5 key layout"):
    umt5_keys.detect_layout(["decoder.block.0.weight", "lm_head.weight"])


@pytest.mark.parametrize("layout", ["hf", "wan"])
def test_missing_key_is_named(reference, layout):
  tensors = hf_tensors(reference) if layout == "hf" else wan_tensors(reference)
  key = {"hf": "encoder.block.1.layer.0.SelfAttention.k.weight",
         "wan": "blocks.1.attn.k.weight"}[layout]
  del tensors[key]
  with pytest.raises(CheckpointError, match=re.escape(key)):
    list(umt5_keys.convert(DictStore(tensors), np.float32))


def test_wrong_shape_is_named(reference):
  tensors = hf_tensors(reference)
  key = "encoder.block.2.layer.1.DenseReluDense.wi_1.weight"
  tensors[key] = np.zeros((TINY["d_ff"] + 1, TINY["d_model"]), np.float32)
  with pytest.raises(CheckpointError, match=r"wrong shape.*" + re.escape(key)):
    list(umt5_keys.convert(DictStore(tensors), np.float32))


def test_unexpected_key_is_named(reference):
  tensors = wan_tensors(reference)
  tensors["blocks.0.attn.q.bias"] = np.zeros(40, np.float32)
  with pytest.raises(CheckpointError, match=r"unexpected.*blocks\.0\.attn\.q\.bias"):
    list(umt5_keys.convert(DictStore(tensors), np.float32))


def test_build_encoder_checks_its_params(reference):
  params = dict(umt5_keys.convert(DictStore(hf_tensors(reference)), np.float32))
  build = lambda changed: umt5_keys.build_encoder(umt5_tiny(), changed)
  lacking = {k: v for k, v in params.items() if k != "blocks.1.ffn.fc2.kernel"}
  with pytest.raises(CheckpointError, match=r"lacks tensor.*blocks\.1\.ffn\.fc2\.kernel"):
    build(lacking)
  extra = {**params, "blocks.3.attn_norm.weight": np.ones(48, np.float32)}
  with pytest.raises(CheckpointError, match=r"does not use.*blocks\.3\.attn_norm\.weight"):
    build(extra)
  with pytest.raises(CheckpointError, match=r"final_norm\.weight.*\(47,\)"):
    build({**params, "final_norm.weight": np.ones(47, np.float32)})
  assert build(params) is not None

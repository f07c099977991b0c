"""Prompts -> embeddings exactly as diffusers' Wan pipeline computes them, with a real tokenizer
class and the umT5 encoder loaded from Wan's bf16 `.pth` and from a diffusers folder."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from reference_codecs import make_umt5, save_tokenizer, save_umt5_wan_pth
from transformers import AutoTokenizer

import wan_jax
from wan_jax.model.prompts import tokenize

PROMPTS = ["a red fox jumps over the lazy dog in snow",
           "  cat\t runs   on beach\n at night &amp;amp; person walks ",
           "dog"]


@pytest.fixture(scope="session")
def encoder_ref():
  """umT5 with weights exactly representable in bf16, so the bf16 .pth holds them exactly."""
  model = make_umt5(seed=7)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.to(torch.bfloat16).to(torch.float32))
  return model


@pytest.fixture(scope="session")
def release(tmp_path_factory, encoder_ref):
  root = tmp_path_factory.mktemp("t5_release")
  save_umt5_wan_pth(encoder_ref, root / "models_t5_umt5-xxl-enc-bf16.pth")
  save_tokenizer(root / "google" / "umt5-xxl")
  return root


def reference_embeddings(encoder_ref, tokenizer_folder, prompts) -> np.ndarray:
  """diffusers' WanPipeline._get_t5_prompt_embeds, the upstream encoding path."""
  pipe = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_folder)),
                         text_encoder=encoder_ref, _execution_device=torch.device("cpu"))
  with torch.no_grad():
    out = WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompts, max_sequence_length=512,
                                            device=torch.device("cpu"), dtype=torch.float32)
  return out.numpy()


def test_clean_prompt():
  assert wan_jax.clean_prompt("  a &amp;amp; b\t\n  c  ") == "a & b c"
  assert wan_jax.clean_prompt("x &lt;y&gt;") == "x <y>"
  assert wan_jax.clean_prompt("a \u201cquoted\u201d word\u2019s \u00c3\u00a9clair") == \
      "a \"quoted\" word's \u00e9clair"  # ftfy, as upstream


def test_cleaning_is_diffusers_cleaning():
  from diffusers.pipelines.wan.pipeline_wan import is_ftfy_available, prompt_clean
  assert is_ftfy_available()  # otherwise diffusers would skip the step we take
  for text in PROMPTS + ["a \u201cquoted\u201d word\u2019s \u00c3\u00a9clair", "\ufb01sh \uff46ull"]:
    assert wan_jax.clean_prompt(text) == prompt_clean(text)


def test_encode_prompts_matches_the_wan_pipeline(release, encoder_ref):
  tokenizer = wan_jax.load_tokenizer(release)
  encoder = wan_jax.load_text_encoder(release, dtype="float32")
  got = np.asarray(wan_jax.encode_prompts(PROMPTS, tokenizer, encoder))
  want = reference_embeddings(encoder_ref, release / "google" / "umt5-xxl", PROMPTS)
  assert got.shape == want.shape == (3, 512, 48)
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
  # True lengths: words + </s>; "&amp;amp;" became "&" (a word of the vocabulary).
  lengths = [11, 10, 2]
  for row, n in zip(got, lengths, strict=True):
    assert np.all(row[n:] == 0) and np.all(np.abs(row[:n]).sum(-1) > 0)
  ids, mask = tokenize(PROMPTS, tokenizer)
  assert mask.sum(1).tolist() == lengths
  assert ids[1, :9].tolist() == tokenizer.convert_tokens_to_ids(
      "cat runs on beach at night & person walks".split())


def test_long_prompts_are_truncated_with_the_end_token(release):
  tokenizer = wan_jax.load_tokenizer(release)
  ids, mask = tokenize(["dog " * 600, "unknownword"], tokenizer)
  assert ids.shape == (2, 512) and mask[0].all()
  assert ids[0, -1] == tokenizer.eos_token_id
  assert ids[1, 0] == tokenizer.unk_token_id and mask[1].sum() == 2
  with pytest.raises(TypeError, match="list of strings"):
    tokenize("one string", tokenizer)


@pytest.mark.slow
def test_text_encoder_from_a_diffusers_folder_through_the_cli(tmp_path, encoder_ref, release):
  from helpers import run_cli

  root = tmp_path / "diffusers"
  encoder_ref.save_pretrained(root / "text_encoder")
  save_tokenizer(root / "tokenizer")
  out = tmp_path / "converted"
  result = run_cli(root, out, "--text-encoder-dtype", "float32")
  assert result.returncode == 0, result.stderr
  assert (out / "text_encoder").is_dir() and (out / "tokenizer" / "tokenizer.json").is_file()
  got = wan_jax.encode_prompts(PROMPTS, wan_jax.load_tokenizer(out),
                               wan_jax.load_text_encoder(out, dtype="float32"))
  want = reference_embeddings(encoder_ref, root / "tokenizer", PROMPTS)
  assert np.abs(np.asarray(got) - want).max() / np.abs(want).max() < 1e-5


def test_bf16_encoder(release, encoder_ref):
  encoder = wan_jax.load_text_encoder(release)  # the default: bfloat16, as released
  assert encoder.blocks.attn.q.kernel[...].dtype == jnp.bfloat16
  got = np.asarray(wan_jax.encode_prompts(PROMPTS, wan_jax.load_tokenizer(release), encoder))
  want = reference_embeddings(encoder_ref, release / "google" / "umt5-xxl", PROMPTS)
  assert np.abs(got - want).max() / np.abs(want).max() < 2e-2

"""Prompts -> the [B, 512, 4096] context the transformer takes, as upstream Wan computes it.

Text is cleaned (ftfy's fix_text, HTML entities unescaped twice, whitespace collapsed), tokenized to 512 tokens with
the release's own tokenizer (padding, truncation, the closing </s>), encoded by umT5, and every
row past a prompt's true length is set to zero (upstream trims the output to the true length and
the transformer zero-pads it back).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ftfy
import numpy as np
from flax import nnx

from wan_jax.model.umt5 import UMT5Encoder

TEXT_LEN = 512


def clean_prompt(text: str) -> str:
  """ftfy.fix_text (mojibake, curly quotes), html-unescape twice and collapse whitespace: what
  upstream Wan does before tokenizing, so the same prompt gives the same tokens."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip()


def tokenize(prompts: Sequence[str], tokenizer, max_length: int = TEXT_LEN
             ) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, attention_mask), int32 [B, max_length] each."""
  if isinstance(prompts, str):
    raise TypeError("prompts must be a list of strings, not one string")
  batch = tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                    max_length=max_length, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="np")
  return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)


@nnx.jit
def encode_tokens(encoder: UMT5Encoder, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """`tokenize`'s output encoded: [B, L, d_model] float32, rows past each mask's length zero."""
  out = encoder(ids_BxL, mask_BxL)
  lengths = jnp.sum(mask_BxL != 0, axis=1)
  keep = jnp.arange(ids_BxL.shape[1])[None, :] < lengths[:, None]
  return jnp.where(keep[..., None], out, 0.0)


def encode_prompts(prompts: Sequence[str], tokenizer, encoder: UMT5Encoder,
                   max_length: int = TEXT_LEN) -> jax.Array:
  """[B, max_length, d_model] float32; rows past each prompt's token count are zero.

  Compiled once per batch size (every batch is padded to max_length).
  """
  ids, mask = tokenize(prompts, tokenizer, max_length)
  return encode_tokens(encoder, jnp.asarray(ids), jnp.asarray(mask))

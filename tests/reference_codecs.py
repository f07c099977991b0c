"""Reference VAEs (Wan 2.1, and 2.2 for the TI2V-5B), text encoder and tokenizer for the tests,
written in every release layout.

Random weights: diffusers' `AutoencoderKLWan` and transformers' `UMT5EncoderModel`, and a tiny
word-level tokenizer saved with transformers' own classes. The original-layout VAE keys are
produced by a hand-written inverse of diffusers' names (independent of `wan_jax.weights.vae_keys`),
and a test checks it against diffusers' own `convert_wan_vae_to_diffusers`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel

from wan_jax.model.vae_config import LATENTS_MEAN_22, LATENTS_STD_22

UMT5_TINY = {"vocab_size": 300, "d_model": 48, "num_heads": 4, "d_kv": 10, "d_ff": 72,
             "num_layers": 3, "relative_attention_num_buckets": 32,
             "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
             "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6}
WORDS = ("a red fox jumps over the lazy dog in snow at night cat runs & < > "
         "person walks on beach with an umbrella slowly").split()


def _random_vae(seed: int, **config) -> AutoencoderKLWan:
  """An AutoencoderKLWan with random norms and biases too, so no parameter is a no-op."""
  torch.manual_seed(seed)
  vae = AutoencoderKLWan(**config).eval()
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
  return vae


def make_vae(base_dim: int = 8, seed: int = 0) -> AutoencoderKLWan:
  """A Wan 2.1 VAE (random, every parameter in play)."""
  return _random_vae(seed, base_dim=base_dim, z_dim=16)


def _residual_to_original(rest: str) -> str:
  for ours, theirs in (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."),
                       ("norm2.gamma", "residual.3.gamma"), ("conv2.", "residual.6."),
                       ("conv_shortcut.", "shortcut.")):
    if rest.startswith(ours):
      return theirs + rest[len(ours):]
  return rest


def _outer_original_key(key: str) -> str | None:
  """The original name of a key both VAE versions name alike (the quant convs, each side's
  conv_in / norm_out / conv_out and the mid-block attention); None for the others."""
  for theirs, original in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
    if key.startswith(theirs):
      return original + key[len(theirs):]
  side, rest = key.split(".", 1)
  for theirs, original in (("conv_in.", "conv1."), ("norm_out.", "head.0."),
                           ("conv_out.", "head.2."), ("mid_block.attentions.0.", "middle.1.")):
    if rest.startswith(theirs):
      return f"{side}.{original}{rest[len(theirs):]}"
  return None


def vae_original_key(key: str, num_res_blocks: int = 2) -> str:
  """diffusers AutoencoderKLWan key -> original Wan 2.1 VAE key (Wan's vae.py module names)."""
  if (outer := _outer_original_key(key)) is not None:
    return outer
  side, rest = key.split(".", 1)
  if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", rest):
    return f"{side}.middle.{2 * int(m.group(1))}.{_residual_to_original(m.group(2))}"
  if m := re.match(r"down_blocks\.(\d+)\.(.+)", rest):
    return f"encoder.downsamples.{m.group(1)}.{_residual_to_original(m.group(2))}"
  if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
    index = int(m.group(1)) * (num_res_blocks + 2) + int(m.group(2))
    return f"decoder.upsamples.{index}.{_residual_to_original(m.group(3))}"
  if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
    index = int(m.group(1)) * (num_res_blocks + 2) + num_res_blocks + 1
    return f"decoder.upsamples.{index}.{m.group(2)}"
  raise KeyError(key)


def vae_original_state_dict(vae: AutoencoderKLWan) -> dict[str, torch.Tensor]:
  return {vae_original_key(k): v.clone() for k, v in vae.state_dict().items()}


def save_vae_diffusers(vae: AutoencoderKLWan, folder: Path) -> Path:
  vae.save_pretrained(folder)
  return folder


def save_vae_pth(vae: AutoencoderKLWan, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save(vae_original_state_dict(vae), path)
  return path


# The released VAE's diffusers config (scripts/convert_wan_to_diffusers.py, vae22_diffusers_config).
VAE22_REAL = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True,
              "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4,
              "scale_factor_spatial": 16, "latents_mean": list(LATENTS_MEAN_22),
              "latents_std": list(LATENTS_STD_22)}
VAE22_TINY = {**VAE22_REAL, "base_dim": 8, "decoder_base_dim": 12}  # = tiny_vae22()


def vae22_original_key(key: str) -> str:
  """diffusers key -> the key upstream's WanVAE_ (vae2_2.py) state dict has."""
  if (outer := _outer_original_key(key)) is not None:
    return outer
  side, rest = key.split(".", 1)
  m = re.match(r"(mid_block|down_blocks|up_blocks)\.(\d+\.)?(resnets\.(\d+)\.|downsampler\.|"
               r"upsampler\.)(.+)", rest)
  if m is None:
    raise KeyError(key)
  group, level, part, j, leaf = m.groups()
  if part.startswith("resnets"):
    leaf = _residual_to_original(leaf)
  if group == "mid_block":
    return f"{side}.middle.{2 * int(j)}.{leaf}"
  kind = "downsamples" if group == "down_blocks" else "upsamples"
  # the resampler follows the level's res blocks: 2 in the encoder, 3 in the decoder (tiny and real)
  index = j if j is not None else (2 if kind == "downsamples" else 3)
  return f"{side}.{kind}.{level}{kind}.{index}.{leaf}"


def make_vae22(cfg: dict, seed: int) -> AutoencoderKLWan:
  """A Wan 2.2 VAE (TI2V-5B) of `cfg` (VAE22_TINY, VAE22_REAL), random, every parameter in play."""
  return _random_vae(seed, **cfg)


def save_vae22_pth(vae: AutoencoderKLWan, path: Path) -> Path:
  """`Wan2.2_VAE.pth` as the TI2V-5B release ships it (upstream's names, torch.save)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save({vae22_original_key(k): v.clone() for k, v in vae.state_dict().items()}, path)
  return path


def make_umt5(seed: int = 0, *, norm_spread: float = 0.2, weight_noise: float = 0.0,
              attn_implementation: str | None = None) -> UMT5EncoderModel:
  """Random weights with norm gains 1 + norm_spread * N(0, 1), random bias tables, and (when
  weight_noise) every other weight moved by weight_noise * its std."""
  torch.manual_seed(seed)
  extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
  model = UMT5EncoderModel(UMT5Config(**UMT5_TINY, **extra)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1 + norm_spread * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
      elif weight_noise:
        p.add_(weight_noise * p.std() * torch.randn_like(p))
  return model


_HF_TO_WAN = [  # HF key -> Wan .pth key, from the spec's table (section 6), not our key map
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.final_layer_norm\.", "norm."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
     r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"blocks.\1.attn."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
]


def umt5_wan_key(hf_key: str) -> str:
  for pattern, repl in _HF_TO_WAN:
    new = re.sub(pattern, repl, hf_key)
    if new != hf_key:
      return new
  raise KeyError(f"no Wan name for {hf_key}")


def save_umt5_wan_pth(model: UMT5EncoderModel, path: Path, dtype=torch.bfloat16) -> Path:
  """Wan's own `models_t5_umt5-xxl-enc-bf16.pth` layout (bf16, Wan key names)."""
  out = {}
  for key, value in model.state_dict().items():
    if key == "encoder.embed_tokens.weight":
      continue  # tied to shared.weight
    out[umt5_wan_key(key)] = value.to(dtype).clone()
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save(out, path)
  return path


def save_tokenizer(folder: Path) -> Path:
  """A real word-level tokenizer (transformers' T5 fast class): <pad>=0, </s>=1, <unk>=2."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
  for w in WORDS:
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                     special_tokens=[("</s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                 unk_token="<unk>")
  fast.save_pretrained(folder)
  return folder

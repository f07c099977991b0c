"""wan-jax: a JAX/Flax trainer for Wan 2.2 A14B video diffusion."""

from wan_jax.model.config import WanConfig, i2v_a14b, t2v_a14b, tiny, tiny_i2v
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.i2v_condition import i2v_condition
from wan_jax.model.prompts import clean_prompt, encode_prompts
from wan_jax.model.transformer import WanTransformer
from wan_jax.model.umt5 import UMT5Config, UMT5Encoder
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import VAEConfig
from wan_jax.weights.convert import convert_checkpoint
from wan_jax.weights.load import load_dual_transformer, load_transformer, task_of
from wan_jax.weights.load_encoders import load_text_encoder, load_tokenizer, load_vae

__all__ = [
    "WanConfig", "WanTransformer", "DualWanTransformer", "t2v_a14b", "tiny", "i2v_a14b",
    "tiny_i2v",
    "VAEConfig", "WanVAE", "UMT5Config", "UMT5Encoder",
    "convert_checkpoint", "load_transformer", "load_dual_transformer",
    "load_vae", "load_text_encoder", "load_tokenizer", "encode_prompts", "clean_prompt",
    "i2v_condition", "task_of",
]

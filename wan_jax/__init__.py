"""wan-jax: a JAX/Flax trainer for Wan 2.2 video diffusion (A14B T2V and I2V, TI2V-5B)."""

from wan_jax.model.config import WanConfig, i2v_a14b, t2v_a14b, ti2v_5b, tiny, tiny_i2v, tiny_ti2v
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.i2v_condition import i2v_condition
from wan_jax.model.prompts import clean_prompt, encode_prompts
from wan_jax.model.transformer import WanTransformer
from wan_jax.model.umt5 import UMT5Config, UMT5Encoder
from wan_jax.model.vae import WanVAE
from wan_jax.model.vae_config import VAEConfig, wan21_vae, wan22_vae
from wan_jax.weights.convert import convert_checkpoint
from wan_jax.weights.load import load_dual_transformer, load_transformer, task_of
from wan_jax.weights.load_encoders import load_text_encoder, load_tokenizer, load_vae

__all__ = [
    "WanConfig", "WanTransformer", "DualWanTransformer", "t2v_a14b", "tiny", "i2v_a14b",
    "tiny_i2v", "ti2v_5b", "tiny_ti2v",
    "VAEConfig", "wan21_vae", "wan22_vae", "WanVAE", "UMT5Config", "UMT5Encoder",
    "convert_checkpoint", "load_transformer", "load_dual_transformer",
    "load_vae", "load_text_encoder", "load_tokenizer", "encode_prompts", "clean_prompt",
    "i2v_condition", "task_of",
]

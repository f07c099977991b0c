"""wan-jax: a JAX/Flax trainer for Wan 2.2 A14B video diffusion."""

from wan_jax.model.config import WanConfig, t2v_a14b, tiny
from wan_jax.model.dual import DualWanTransformer
from wan_jax.model.transformer import WanTransformer
from wan_jax.weights.convert import convert_transformers
from wan_jax.weights.load import load_dual_transformer, load_transformer

__all__ = [
    "WanConfig", "WanTransformer", "DualWanTransformer", "t2v_a14b", "tiny",
    "convert_transformers", "load_transformer", "load_dual_transformer",
]

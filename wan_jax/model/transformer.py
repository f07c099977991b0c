"""The Wan 2.x video transformer (one expert) in Flax NNX.

model(latents [B, F, H, W, C], timestep [B], [B, F] or [B, F, H, W] in [0, 1000],
context [B, L<=text_len, text_dim]) -> velocity [B, F, H, W, out_channels] (fp32). The residual
stream, modulation, norms, time MLP and head run in fp32; the other matmuls and attention in
`config.compute_dtype`.

A timestep per latent position is what TI2V-5B takes: the tokens of an image-conditioned first
frame get t = 0 while the rest are noised to t (upstream WanModel with t [B, seq_len]; diffusers'
WanPipeline with expand_timesteps). The time embedding and every modulation then become per
token; with one timestep per latent frame ([B, F], what the TI2V task passes: the same model
when each frame's positions share a value) they are per frame and broadcast over the frame's
tokens, so no [B, N, 6, D] array (2 GiB at 704x1280x121) is held; with one timestep per sample
([B], the A14B) they stay [B, ...] and broadcast.

The 40 blocks are one module whose parameters carry a leading layer axis; the forward pass
scans over that axis, so compile time does not grow with depth. Block weights that wait in host
memory (streamed, wan_jax/model/streaming.py) are fetched inside the scan, one block at a time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan_jax.model.attention import attention, resolve_impl
from wan_jax.model.config import WanConfig
from wan_jax.model.layers import LayerNorm, Linear, RMSNorm, layer_norm, normal
from wan_jax.model.remat import name_block_input, name_self_attention, remat_block
from wan_jax.model.rope import apply_rope, rope_tables
from wan_jax.model.streaming import fetch

F32 = jnp.float32


class Attention(nnx.Module):
  """Self- or cross-attention: q/k RMS-normalised across all heads before the head split."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    pd, cd = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    lin = functools.partial(Linear, cfg.dim, cfg.dim, param_dtype=pd, compute_dtype=cd, rngs=rngs,
                            quantize=cfg.quantize)
    self.q, self.k, self.v, self.o = lin(), lin(), lin(), lin()
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, param_dtype=pd)
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, param_dtype=pd)
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention
    self.chunk_size = cfg.attention_chunk_size

  def __call__(self, x_BxNxD: jax.Array, context_BxSxD: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    src = x_BxNxD if context_BxSxD is None else context_BxSxD
    q = self.norm_q(self.q(x_BxNxD))
    k = self.norm_k(self.k(src))
    v = self.v(src)
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)
    q, k, v = split(q), split(k), split(v)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    impl = resolve_impl(self.impl, q.dtype)
    out = attention(q, k, v, impl=impl, chunk_size=self.chunk_size)
    if context_BxSxD is None and impl != "cudnn":  # cuDNN's output is kept by its own kernel
      out = name_self_attention(out)
    return self.o(out.reshape(x_BxNxD.shape[:2] + (-1,)))


class WanBlock(nnx.Module):
  """Self-attention and FFN with 6-way modulation; ungated cross-attention in between."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    pd, cd = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    self.modulation = nnx.Param(
        normal(rngs, (1, 6, cfg.dim), 1 / np.sqrt(cfg.dim), pd))
    self.self_attn = Attention(cfg, rngs=rngs)
    self.cross_attn = Attention(cfg, rngs=rngs)
    self.norm3 = LayerNorm(cfg.dim, cfg.eps, param_dtype=pd)
    self.ffn_in = Linear(cfg.dim, cfg.ffn_dim, param_dtype=pd, compute_dtype=cd, rngs=rngs,
                         quantize=cfg.quantize)
    self.ffn_out = Linear(cfg.ffn_dim, cfg.dim, param_dtype=pd, compute_dtype=cd, rngs=rngs,
                          quantize=cfg.quantize)
    self.eps = cfg.eps
    self.compute_dtype = cd

  def __call__(self, x_BxNxD: jax.Array, e0: jax.Array, context_BxSxD: jax.Array,
               rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """e0: the time projection, [B, 6, D] (one timestep per sample) or [B, G, 6, D] for G
    equal groups of consecutive tokens (G = N: per token; G = latent frames: per frame)."""
    cd = self.compute_dtype
    m = self.modulation[...].astype(F32) + e0
    m_BxGx6xD = m[:, None] if m.ndim == 3 else m
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
        per_token(m_BxGx6xD[:, :, i], x_BxNxD.shape[1]) for i in range(6))  # each [B, 1|N, D]

    h = layer_norm(x_BxNxD, self.eps) * (1 + scale_sa) + shift_sa
    x = x_BxNxD + self.self_attn(h.astype(cd), rope=rope).astype(F32) * gate_sa
    x = x + self.cross_attn(self.norm3(x).astype(cd), context_BxSxD).astype(F32)
    h = layer_norm(x, self.eps) * (1 + scale_ff) + shift_ff
    y = self.ffn_out(jax.nn.gelu(self.ffn_in(h.astype(cd)), approximate=True))
    return x + y.astype(F32) * gate_ff


def per_token(v_BxGxD: jax.Array, n: int) -> jax.Array:
  """A value per group of consecutive tokens as one per token ([B, N, D]; G = 1 stays [B, 1, D]
  and broadcasts). A broadcast XLA fuses into its consumers: per-frame modulation never holds a
  [B, N, D] array of its own."""
  b, g, d = v_BxGxD.shape
  if g in (1, n):
    return v_BxGxD
  return jnp.broadcast_to(v_BxGxD[:, :, None], (b, g, n // g, d)).reshape(b, n, d)


def _leading_bits(x: np.ndarray, bits: int) -> np.ndarray:
  """The first `bits` significant bits of float64 x (so small products of them are exact)."""
  mantissa, exponent = np.frexp(x)
  return np.ldexp(np.round(mantissa * 2.0**bits), exponent - bits)


_TWO_PI_1 = _leading_bits(2 * np.pi, 16)  # 2*pi in three fp32 parts (Cody-Waite reduction)
_TWO_PI_2 = _leading_bits(2 * np.pi - _TWO_PI_1, 16)
_TWO_PI_3 = 2 * np.pi - _TWO_PI_1 - _TWO_PI_2


def timestep_sinusoid(t: jax.Array, dim: int) -> jax.Array:
  """[cos, sin] of t * 10000^(-k/half), k < half: [..., dim] fp32 for t [...] (cos first, as
  upstream).

  Upstream computes the angles in float64: at t ~ 1000 a plain fp32 product is off by ~6e-5 rad.
  Here t = integer part + fraction and each frequency is split into exact 13-bit pieces, so the
  large products are exact and are reduced modulo 2*pi before rounding: ~5e-7 from float64.
  """
  half = dim // 2
  freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
  f1 = _leading_bits(freqs, 13)
  f2 = _leading_bits(freqs - f1, 13)
  f3 = freqs - f1 - f2
  const = lambda x: jnp.asarray(x, F32)
  t = t.astype(F32)[..., None]
  whole = jnp.floor(t)  # <= 1000: 10 bits, so whole * f1 and whole * f2 are exact in fp32
  p1 = whole * const(f1)
  turns = jnp.round(p1 / const(2 * np.pi))
  reduced = ((p1 - turns * const(_TWO_PI_1)) - turns * const(_TWO_PI_2)) - turns * const(_TWO_PI_3)
  angle = reduced + whole * const(f2) + whole * const(f3) + (t - whole) * const(freqs)
  return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)


class WanTransformer(nnx.Module):
  """One Wan 2.x expert. Parameter names follow the original Wan keys where they can."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    pd, cd = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.compute_dtype)
    lin = functools.partial(Linear, param_dtype=pd, compute_dtype=cd, rngs=rngs)
    lin32 = functools.partial(Linear, param_dtype=pd, compute_dtype=F32, rngs=rngs)
    self.config = cfg
    self.patch_embedding = lin(cfg.patch_volume * cfg.in_channels, cfg.dim)
    self.text_embedding_1 = lin(cfg.text_dim, cfg.dim)
    self.text_embedding_2 = lin(cfg.dim, cfg.dim)
    self.time_embedding_1 = lin32(cfg.freq_dim, cfg.dim)
    self.time_embedding_2 = lin32(cfg.dim, cfg.dim)
    self.time_projection = lin32(cfg.dim, 6 * cfg.dim)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked_blocks(rngs: nnx.Rngs) -> WanBlock:
      return WanBlock(cfg, rngs=rngs)

    self.blocks = stacked_blocks(rngs)
    self.head = lin32(cfg.dim, cfg.out_channels * cfg.patch_volume, init_scale=0.1)
    self.head_modulation = nnx.Param(
        normal(rngs, (1, 2, cfg.dim), 1 / np.sqrt(cfg.dim), pd))

  def _with_condition(self, latents: jax.Array, condition: jax.Array | None) -> jax.Array:
    want = self.config.condition_channels
    if not want:
      if condition is not None:
        raise ValueError("this is a text-to-video model (or TI2V-5B, whose image replaces the "
                         "first latent frame; in_channels == out_channels); it takes no condition")
      return latents
    if condition is None:
      raise ValueError(f"this image-to-video model needs a condition of {want} channels "
                       f"(wan_jax.i2v_condition)")
    if condition.shape != (*latents.shape[:4], want):
      raise ValueError(f"condition {condition.shape} must be the latents' {latents.shape[:4]} "
                       f"with {want} channels")
    return jnp.concatenate([latents, condition.astype(latents.dtype)], axis=-1)

  def embed_time(self, timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(e [..., D], e0 [..., 6, D]) for timesteps [...] ([B], or [B, N] per token): the raw time
    embedding (head) and the block modulation input."""
    t = timestep_sinusoid(timestep, self.config.freq_dim)
    e = self.time_embedding_2(jax.nn.silu(self.time_embedding_1(t)))
    e0 = self.time_projection(jax.nn.silu(e))
    return e, e0.reshape(*e.shape[:-1], 6, -1)

  def token_timesteps(self, timestep: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
    """timestep [B] as it is, [B, F] (one per latent frame) as [B, F/pt] per frame of tokens,
    or [B, F, H, W] (one per latent position) as [B, N] per token.

    A token is one patch (1x2x2 positions); it takes its patch's first position's timestep, as
    upstream and diffusers do (their per-token timesteps are the mask sampled at [::2, ::2]).
    Timesteps that differ inside a patch are not checked (that would need a host round trip);
    give every position of a patch the same value. Per frame is the same model as per position
    with each frame's positions equal, at the cost of per-sample timesteps (the TI2V's image
    frame at 0 needs no more).
    """
    b, f, h, w = latent_shape[:4]
    pt, ph, pw = self.config.patch_size
    if timestep.shape == (b,):
      return timestep
    if timestep.shape == (b, f):
      return timestep[:, ::pt]
    if timestep.shape != (b, f, h, w):
      raise ValueError(f"timestep must be [B] = ({b},), [B, F] = {(b, f)} (one per latent "
                       f"frame) or [B, F, H, W] = {(b, f, h, w)} (one per latent position), "
                       f"got {timestep.shape}")
    return timestep[:, ::pt, ::ph, ::pw].reshape(b, -1)

  def embed_text(self, context_BxLxT: jax.Array) -> jax.Array:
    """Zero-pads the prompt embedding to text_len rows (as upstream), then projects it."""
    cfg = self.config
    length = context_BxLxT.shape[1]
    if length > cfg.text_len or context_BxLxT.shape[2] != cfg.text_dim:
      raise ValueError(f"context must be [B, L<={cfg.text_len}, {cfg.text_dim}], "
                       f"got {context_BxLxT.shape}")
    ctx = jnp.pad(context_BxLxT, ((0, 0), (0, cfg.text_len - length), (0, 0)))
    return self.text_embedding_2(jax.nn.gelu(self.text_embedding_1(ctx), approximate=True))

  def __call__(self, latents: jax.Array, timestep: jax.Array, context: jax.Array,
               condition: jax.Array | None = None) -> jax.Array:
    """The predicted flow [B, F, H, W, out_channels] of `latents` [B, F, H, W, C] at `timestep`
    with `context` [B, L, text_dim]. `timestep`: [B], one per sample, [B, F], one per latent
    frame, or [B, F, H, W], one per latent position (TI2V-5B: 0 on the conditioning image's
    frame; see `token_timesteps`).
    `condition` (image-to-video models only: [B, F, H, W, 20], mask channels then the
    conditioning latents) is joined after the latents on the channel axis, as upstream joins
    it."""
    cfg = self.config
    context_BxLxT = context
    latents_BxFxHxWxC = self._with_condition(latents, condition)
    b, f, h, w, c = latents_BxFxHxWxC.shape
    pt, ph, pw = cfg.patch_size
    if c != cfg.in_channels or f % pt or h % ph or w % pw:
      raise ValueError(f"latents {latents_BxFxHxWxC.shape} do not fit patch {cfg.patch_size} "
                       f"and {cfg.in_channels} channels")
    gf, gh, gw = f // pt, h // ph, w // pw
    patches = latents_BxFxHxWxC.reshape(b, gf, pt, gh, ph, gw, pw, c)
    patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, gf * gh * gw, -1)
    x_BxNxD = self.patch_embedding(patches).astype(F32)

    # [B] -> e [B, D], e0 [B, 6, D]; per frame or token [B, G] -> e [B, G, D], e0 [B, G, 6, D].
    e, e0 = self.embed_time(self.token_timesteps(timestep, latents_BxFxHxWxC.shape))
    context_BxSxD = self.embed_text(context_BxLxT)
    rope = rope_tables((gf, gh, gw), cfg.rope_split, cfg.rope_theta, cfg.rope_max_positions)

    graphdef, layer_states = nnx.split(self.blocks)

    def one_layer(x, layer_state):
      block = nnx.merge(graphdef, fetch(layer_state))  # streamed weights: this block's, now
      return block(name_block_input(x), e0, context_BxSxD, rope), None

    x_BxNxD, _ = jax.lax.scan(remat_block(one_layer, cfg.remat), x_BxNxD, layer_states)

    e_BxGxD = e[:, None] if e.ndim == 2 else e
    m = self.head_modulation[...].astype(F32) + e_BxGxD[:, :, None]  # [B, G, 2, D]
    n = x_BxNxD.shape[1]
    out = self.head(layer_norm(x_BxNxD, cfg.eps) * (1 + per_token(m[:, :, 1], n))
                    + per_token(m[:, :, 0], n))
    out = out.reshape(b, gf, gh, gw, pt, ph, pw, cfg.out_channels)
    return out.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, f, h, w, cfg.out_channels)

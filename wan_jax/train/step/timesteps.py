"""Training timesteps drawn inside one expert's range, t in [0, 1000], s = t / 1000.

Ranges. With threshold = boundary * 1000 and routing `t >= threshold` -> high-noise (as in
`wan_jax.model.dual`), the experts own
    high: [threshold, 1000]    (closed: the threshold itself is high-noise)
    low:  [0, threshold)       (half-open: the low expert never sees the threshold)
which partition [0, 1000] with no gap and no overlap.

Sampling. `sample_timesteps` always draws from the half-open [low, high) in float32: for the low
expert that is its whole range, and for the high expert it only leaves out t = 1000 exactly, a
point of probability zero. Every method is a monotone map s = g(b) of a base variable b (uniform
or standard normal), so the method's distribution conditioned on [low, high) is g of b truncated
to [g^-1(low), g^-1(high)); b is truncated by inverse CDF (u uniform between the base CDF at the
two ends, mapped back), never by rejection, so every draw is used and lands in the range. The
final clip, as in `jax.random.truncated_normal`, only absorbs float32 rounding (a few ulps at the
ends); it moves no measurable probability mass, and it guarantees a low-expert draw never rounds
up to the threshold (which would route it to the other expert).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from wan_jax.model import flow_matching
from wan_jax.model.flow_matching import NUM_TRAIN_TIMESTEPS

def _truncated_uniform(key: jax.Array, batch: int, a: jax.Array, b: jax.Array) -> jax.Array:
  return jax.random.uniform(key, (batch,), jnp.float32, minval=a, maxval=b)


def _truncated_normal(key: jax.Array, batch: int, a: jax.Array, b: jax.Array) -> jax.Array:
  """Standard normal restricted to [a, b] by inverse CDF.

  A range in the upper half is mirrored into the lower tail, where float32 keeps ndtr's full
  relative precision (near CDF = 1 its spacing is 6e-8, which would flatten a far upper tail).
  """
  flip = (a + b) > 0  # NaN for (-inf, inf): no flip, as wanted
  lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  z = ndtri(_truncated_uniform(key, batch, ndtr(lo), ndtr(hi)))
  return jnp.where(flip, -z, z)


def _logit(s: jax.Array) -> jax.Array:
  return jnp.log(s) - jnp.log1p(-s)  # -inf at 0 and +inf at 1, never NaN


@dataclasses.dataclass(frozen=True)
class Params:
  """The methods' parameters (train.shift, train.logit_mean, train.logit_std); may be traced."""

  shift: float | jax.Array = 5.0
  logit_mean: float | jax.Array = 0.0
  logit_std: float | jax.Array = 1.0


def _uniform(key: jax.Array, batch: int, s_lo: jax.Array, s_hi: jax.Array,
             p: Params) -> jax.Array:
  """s ~ U(0, 1)."""
  return _truncated_uniform(key, batch, s_lo, s_hi)


def _shift(key: jax.Array, batch: int, s_lo: jax.Array, s_hi: jax.Array, p: Params) -> jax.Array:
  """s = k u / (1 + (k - 1) u), u ~ U(0, 1), k = shift (k > 1 favours high noise)."""
  k = jnp.asarray(p.shift, jnp.float32)
  u = _truncated_uniform(key, batch, flow_matching.unshift(s_lo, k),  # the shifted s's CDF
                         flow_matching.unshift(s_hi, k))
  return flow_matching.shift(u, k)


def _logit_normal(key: jax.Array, batch: int, s_lo: jax.Array, s_hi: jax.Array,
                  p: Params) -> jax.Array:
  """s = sigmoid(logit_mean + logit_std * z), z ~ N(0, 1)."""
  mean = jnp.asarray(p.logit_mean, jnp.float32)
  std = jnp.asarray(p.logit_std, jnp.float32)
  z = _truncated_normal(key, batch, (_logit(s_lo) - mean) / std, (_logit(s_hi) - mean) / std)
  return jax.nn.sigmoid(mean + std * z)


def _positive(name: str) -> Callable[[Params], str | None]:
  def check(p: Params) -> str | None:
    value = getattr(p, name)
    if isinstance(value, (int, float)) and not value > 0:
      return f"{name} must be > 0, got {value}"
    return None
  return check


# train.timestep_sampling -> (draw s in [s_lo, s_hi), check of its concrete parameters). A new
# method is one entry: a monotone map of a base variable truncated by inverse CDF, as above.
SAMPLERS: dict[str, tuple[Callable[..., jax.Array], Callable[[Params], str | None]]] = {
    "uniform": (_uniform, lambda p: None),
    "logit_normal": (_logit_normal, _positive("logit_std")),
    "shift": (_shift, _positive("shift")),
}
METHODS = tuple(SAMPLERS)


def _check(low: object, high: object, method: str, params: Params) -> None:
  """Validates what is concrete; traced bounds (inside jit) are the caller's responsibility."""
  if method not in SAMPLERS:
    raise ValueError(f"timestep method must be one of {METHODS}, got {method!r}")
  concrete = isinstance(low, (int, float)) and isinstance(high, (int, float))
  if concrete and not 0.0 <= low < high <= NUM_TRAIN_TIMESTEPS:
    raise ValueError(f"need 0 <= low < high <= {NUM_TRAIN_TIMESTEPS}, got [{low}, {high})")
  problem = SAMPLERS[method][1](params)
  if problem:
    raise ValueError(problem)


def sample_timesteps(key: jax.Array, batch: int, low: float | jax.Array, high: float | jax.Array,
                     method: str = "uniform", *, shift: float = 5.0, logit_mean: float = 0.0,
                     logit_std: float = 1.0) -> jax.Array:
  """[batch] float32 timesteps, each in [low, high), from `method` (SAMPLERS) conditioned on that
  range. `batch` and `method` are static; the bounds and parameters may be traced."""
  params = Params(shift, logit_mean, logit_std)
  _check(low, high, method, params)
  low_t = jnp.asarray(low, jnp.float32)
  high_t = jnp.asarray(high, jnp.float32)
  s = SAMPLERS[method][0](key, batch, low_t / NUM_TRAIN_TIMESTEPS, high_t / NUM_TRAIN_TIMESTEPS,
                          params)
  t = s * NUM_TRAIN_TIMESTEPS
  return jnp.clip(t, low_t, jnp.nextafter(high_t, jnp.float32(-jnp.inf)))

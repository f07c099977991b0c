"""Fingerprints of the training state, computed on the device, to verify a restored checkpoint.

A flipped byte in a checkpoint's array data can decode to plausible numbers (Adam moments of 7e34)
that train on silently. Each array's bits are summed as unsigned integers, once plainly and once
weighted by position, both modulo 2**32: integer sums are exact in any order, so the result is
the same whatever the sharding or device count of the run that restores it, and only the two
32-bit words per array leave the device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
  """[plain sum, position-weighted sum] of the array's bit patterns, as uint32."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize in _UNSIGNED:
    bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)
  else:  # 8-byte values: both halves
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = bits.reshape(-1)
  position = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * position, dtype=jnp.uint32)])


@jax.jit
def _all_words(leaves: list[jax.Array]) -> list[jax.Array]:
  return [_words(x) for x in leaves]


def checksums(tree: Any) -> dict[str, str]:
  """{key path: 16 hex digits} for every array of `tree` (blocks until computed)."""
  paths, leaves = zip(*jax.tree_util.tree_leaves_with_path(tree)) if jax.tree.leaves(tree) \
      else ((), ())
  words = jax.device_get(_all_words(list(leaves)))
  return {jax.tree_util.keystr(p): f"{int(w[0]):08x}{int(w[1]):08x}"
          for p, w in zip(paths, np.asarray(words).reshape(-1, 2))}


def mismatches(tree: Any, expected: dict[str, str]) -> list[str]:
  """Key paths whose arrays differ from the fingerprints recorded at save (or are missing)."""
  got = checksums(tree)
  return sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))

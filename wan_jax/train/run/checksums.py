"""Fingerprints of the training state, computed on the device, to verify a restored checkpoint.

A flipped byte in a checkpoint's array data can decode to plausible numbers (Adam moments of 7e34)
that train on silently. Each array's bits are summed as unsigned integers, once plainly and once
weighted by position, both modulo 2**32: integer sums are exact in any order, so the result is
the same whatever the sharding or device count of the run that restores it, and only the two
32-bit words per array leave the device. Arrays waiting in host memory (an offloaded expert) are
summed on the host with the same arithmetic.
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


_MASK = 0xFFFFFFFF
_CHUNK = 1 << 24  # host arrays are summed this many words at a time (64 MiB of temporaries)


def _host_words(x: jax.Array) -> tuple[int, int]:
  """`_words` for an array in host memory (an offloaded expert's): the same two sums in NumPy,
  so nothing is copied to the device, whose memory the offloading was there to spare."""
  a = np.asarray(x).reshape(-1)
  if a.dtype == np.bool_:
    bits = a.view(np.uint8)
  else:
    bits = a.view({1: np.uint8, 2: np.uint16}.get(a.dtype.itemsize, np.uint32))
  plain = weighted = 0
  for start in range(0, bits.size, _CHUNK):
    chunk = bits[start:start + _CHUNK].astype(np.uint32)
    position = (np.arange(start + 1, start + 1 + chunk.size, dtype=np.uint64) & _MASK
                ).astype(np.uint32)
    plain += int(chunk.sum(dtype=np.uint64))
    weighted += int((chunk * position).sum(dtype=np.uint64))  # the product wraps like uint32
  return plain & _MASK, weighted & _MASK


def _in_host_memory(x: jax.Array) -> bool:
  kind = getattr(getattr(x, "sharding", None), "memory_kind", None)
  return kind is not None and kind != "device" and x.is_fully_addressable


def checksums(tree: Any) -> dict[str, str]:
  """{key path: 16 hex digits} for every array of `tree` (blocks until computed)."""
  flat = jax.tree_util.tree_leaves_with_path(tree)
  on_device = [(p, x) for p, x in flat if not _in_host_memory(x)]
  words = dict(zip((p for p, _ in on_device),
                   np.asarray(jax.device_get(_all_words([x for _, x in on_device]))
                              ).reshape(-1, 2) if on_device else []))
  words.update({p: _host_words(x) for p, x in flat if _in_host_memory(x)})
  return {jax.tree_util.keystr(p): f"{int(words[p][0]):08x}{int(words[p][1]):08x}"
          for p, _ in flat}


def mismatches(tree: Any, expected: dict[str, str]) -> list[str]:
  """Key paths whose arrays differ from the fingerprints recorded at save (or are missing)."""
  got = checksums(tree)
  return sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))

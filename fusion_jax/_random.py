"""Uniform random words for the noise models, fused with the code that uses them.

``jax.random.bits`` with JAX's default PRNG (threefry2x32) is lowered on the
CPU backend as a rolled loop: five trips over the whole array, each writing
it to memory. Drawing the words was most of the cost of a noisy
programming step.

:func:`random_words` computes the same hash, Threefry-2x32 with 20 rounds
(Salmon et al. 2011), as plain unrolled ``jax.numpy`` integer operations
keyed by the key's own data, one block per device and counter: one block
gives 64 bits (two words) where ``jax.random.bits`` uses a block per 32-bit
word, and no loop writes the array to memory between rounds. A test checks
the blocks bit for bit against ``jax.extend.random.threefry_2x32``. Keys of
other PRNG implementations (``rbg``, ``unsafe_rbg``, custom ones) draw with
``jax.random.bits``.

This module is the one place of the unrolled hash: it pays on the CPU
(``benchmarks/train_step.py --breakdown`` times it against
``jax.random.bits``). To drop it, make :func:`random_words` return
``jax.random.bits(key, (n_words, *shape), jnp.uint32)`` for every key and
delete the rest; nothing else uses the hash (the draws would change, not
their distribution).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, UInt32

__all__ = ["random_words", "threefry2x32"]

#: Rotation constants of Threefry-2x32, for even and odd groups of four rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: The key-schedule parity constant of Threefry.
_PARITY = 0x1BD11BDA
#: Elements one call can count with its 32-bit counter (more fall back to jax.random.bits).
_MAX_ELEMENTS = 2**32


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(
    k0: UInt32[Array, ""], k1: UInt32[Array, ""], x0: UInt32[Array, "*s"], x1: UInt32[Array, "*s"]
) -> tuple[UInt32[Array, "*s"], UInt32[Array, "*s"]]:
    """Threefry-2x32 (20 rounds) of the counter pairs ``(x0, x1)`` under key ``(k0, k1)``.

    Unrolled, elementwise integer operations: no loop over the rounds, no
    intermediate array written to memory.

    Args:
        k0: First key word.
        k1: Second key word.
        x0: First counter words.
        x1: Second counter words, shape of ``x0``.

    Returns:
        The two output words of every block.

    References:
        J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random
        numbers: as easy as 1, 2, 3", SC 2011.
    """
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(_PARITY))
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _threefry_key_data(key: PRNGKeyArray) -> jax.Array | None:
    """The two words of a threefry2x32 key, or None for keys of other implementations."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw key: the default implementation
    if str(jax.random.key_impl(key)) != "threefry2x32" or key.shape != ():
        return None
    return jax.random.key_data(key)


def random_words(
    key: PRNGKeyArray, n_words: int, shape: tuple[int, ...]
) -> tuple[UInt32[Array, "*s"], ...]:
    """``n_words`` independent uniform 32-bit words per element of ``shape``.

    For a threefry key (JAX's default), block ``b`` of element ``i`` (flat
    index) is Threefry-2x32 of the counter ``(b, i)`` under the key's data;
    its two words are words ``2b`` and ``2b + 1``. Other keys use
    ``jax.random.bits``. Same threefry key, same words, on every backend.

    The words are plain elementwise integer operations, which XLA fuses into
    the code that uses them: nothing is written to memory. A caller that
    reads a sample in more than one place stores the sample, not the words
    (:func:`fusion_jax.program` does).

    Args:
        key: A PRNG key (typed, or a raw ``uint32`` key of the default
            implementation).
        n_words: Words per element.
        shape: Shape of the array of elements.

    Returns:
        ``n_words`` arrays of ``uint32`` words, each of shape ``shape``.

    Example:
        >>> import jax
        >>> from fusion_jax._random import random_words
        >>> w0, w1 = random_words(jax.random.key(0), 2, (3, 4))
        >>> w0.shape, w0.dtype, bool((w0 != w1).any())
        ((3, 4), dtype('uint32'), True)
    """
    data = _threefry_key_data(key)
    size = math.prod(shape)
    if data is None or size >= _MAX_ELEMENTS:
        return tuple(jax.random.bits(key, (n_words, *shape), jnp.uint32))

    def hash_blocks() -> tuple[jax.Array, ...]:
        index = jax.lax.iota(jnp.uint32, size).reshape(shape)
        pairs = [
            threefry2x32(data[0], data[1], jnp.full(shape, block, jnp.uint32), index)
            for block in range(-(-n_words // 2))
        ]
        return tuple(word for pair in pairs for word in pair)[:n_words]

    return hash_blocks()

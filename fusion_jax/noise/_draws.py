"""Random draws of the noise models: bits of two 32-bit words per device."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from fusion_jax import _validation
from fusion_jax._random import random_words

# --------------------------------------------------------------------------
# Random draws: two 32-bit words per device
# --------------------------------------------------------------------------
#
# Random words and the inverse normal CDF are most of the cost of a sample,
# so each device draws one threefry block, two 32-bit words
# (:func:`fusion_jax._random.random_words`: JAX's threefry hash, fused into
# the code that reads it), and the terms share its 64 bits: the normals that set most
# of the spread get 24 bits, the drift normal 16 and the stuck-device uniform
# of FusionChipNoise 24. Disjoint bits of the hash's output are independent,
# so the terms stay independent.

_SQRT2 = math.sqrt(2.0)
_LOW_8 = 0xFF
_LOW_16 = 0xFFFF


def _draw_words(key: PRNGKeyArray, n_words: int, shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """``n_words`` independent uniform 32-bit words per device, each of shape ``shape``."""
    return random_words(key, n_words, shape)


def _normal_from_code(code: jax.Array, n_bits: int, dtype: Any) -> jax.Array:
    """Standard normal from uniform ``n_bits``-bit integers ``code`` (``n_bits <= 24``).

    The inverse normal CDF at the midpoint of the code's bin,
    ``u = (code + 1/2) / 2**n_bits``, as ``sqrt(2) * erfinv(2u - 1)`` with
    ``2u - 1 = (2 code + 1 - 2**n_bits) / 2**n_bits``: an odd integer below
    2**24 times a power of two, exact in float32, strictly inside (-1, 1) and
    symmetric about 0. The ``2**n_bits`` values are equally likely; the
    largest is the normal quantile at ``1 - 2**-(n_bits + 1)``: 5.4 for 24
    bits, 4.3 for 16 bits. Computed in at least float32.
    """
    compute = jnp.promote_types(dtype, jnp.float32)
    odd = 2 * code.astype(jnp.int32) + (1 - 2**n_bits)
    return (_SQRT2 * jax.lax.erf_inv(odd.astype(compute) * 2.0**-n_bits)).astype(dtype)


def _check_read_noise_switch(model: Any) -> None:
    """Refuse a ``read_noise_scale`` set away from its default while ``read_noise`` is off.

    Checked where the model is built, so that every entry point agrees: the
    switch off skips the term, so a non-zero scale other than the class's
    default would be silently ignored. The default scale (and 0) pass:
    ``PCMLikeNoise(read_noise=False)`` turns read noise off. Traced scales
    and pytree placeholders are not checked.
    """
    _validation.check_flag(model.read_noise, "read_noise", type(model).__name__)
    if model.read_noise:
        return
    scale = _validation.concrete_value(model.read_noise_scale)
    if scale is None or scale.dtype.kind not in "biuf":
        return
    default = type(model).__dataclass_fields__["read_noise_scale"].default
    if np.any((scale != default) & (scale != 0)):
        raise ValueError(
            f"{type(model).__name__}: read_noise_scale={np.asarray(scale).tolist()} has no "
            "effect while read_noise=False; pass read_noise=True to add read noise."
        )


def _pcm_draws(
    key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any, *, with_read: bool
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Programming, drift and read normals of :class:`PCMLikeNoise` from two words per device.

    Bits 31-8 of word 0: programming normal (24 bits); bits 31-8 of word 1:
    read normal (24 bits, not computed unless ``with_read``); bits 7-0 of
    both words: drift normal (16 bits).
    """
    w0, w1 = _draw_words(key, 2, shape)
    xi_prog = _normal_from_code(w0 >> 8, 24, dtype)
    xi_drift = _normal_from_code(((w0 & _LOW_8) << 8) | (w1 & _LOW_8), 16, dtype)
    xi_read = _normal_from_code(w1 >> 8, 24, dtype) if with_read else None
    return xi_prog, xi_drift, xi_read


def _chip_draws(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    dtype: Any,
    stuck_probability: Any,
    *,
    with_read: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Latent normal, drift normal, stuck mask and read normal of :class:`FusionChipNoise`.

    The key is split in two. From the first, two words per device: bits
    31-8 of word 0 give the latent normal (24 bits), bits 31-16 of word 1
    the drift normal (16 bits), bits 15-0 of word 1 above bits 7-0 of word
    0 a 24-bit code ``k`` and a device is stuck where ``(k + 1/2) / 2**24 <
    stuck_probability`` (probability within 3e-8 of ``stuck_probability``).
    The read normal (24 bits) comes from a third word drawn with the second
    key, only when ``with_read``: switching read noise on leaves the other
    draws as they were.
    """
    k_main, k_read = jax.random.split(key)
    w0, w1 = _draw_words(k_main, 2, shape)
    xi = _normal_from_code(w0 >> 8, 24, dtype)
    xi_drift = _normal_from_code(w1 >> 16, 16, dtype)
    stuck_code = ((w1 & _LOW_16) << 8) | (w0 & _LOW_8)
    stuck = stuck_code.astype(jnp.float32) + 0.5 < stuck_probability * 2.0**24
    xi_read = None
    if with_read:
        xi_read = _normal_from_code(_draw_words(k_read, 1, shape)[0] >> 8, 24, dtype)
    return xi, xi_drift, stuck, xi_read

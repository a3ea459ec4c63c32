"""Test doubles for noise models."""

import dataclasses

import jax
import jax.numpy as jnp

from fusion_jax._random import random_words


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AbsoluteNoise:
    """Test noise: i.i.d. Gaussian of a fixed ``sigma`` in uS, clamped at 0.

    The normals come from the noise models' own words (``random_words``: the
    threefry hash, unrolled) through the inverse error function, not from
    ``jax.random.normal``: its rolled threefry loop, batched by the sweeps'
    ``jax.vmap``, took XLA several times as long to compile.
    """

    sigma: float = 1.0

    @staticmethod
    def normals(key, shape, dtype=jnp.float32):
        """The standard normals ``sample`` draws with ``key`` for conductances of ``shape``."""
        (word,) = random_words(key, 1, shape)
        u = ((word >> 8).astype(jnp.float32) + 0.5) * 2.0**-24  # uniform in (0, 1)
        return (jnp.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)).astype(dtype)

    def sample(self, conductances, key, *, g_max, t_inference):
        xi = self.normals(key, conductances.shape, conductances.dtype)
        return jnp.maximum(conductances + self.sigma * xi, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OffsetNoise:
    """Test noise without randomness: ``max(gain * g - offset, 0)`` (uS).

    Deterministic per device, so programming with it does not depend on the
    order in which devices draw, yet the result depends on each row's own
    scale (the offset is absolute): it checks which axis is a chip row.
    """

    gain: float = 0.8
    offset: float = 2.0

    def sample(self, conductances, key, *, g_max, t_inference):
        return jnp.maximum(self.gain * conductances - self.offset, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GivenNoise:
    """Test noise: adds the given per-device values (same shape as the conductances)."""

    values: jax.Array

    def sample(self, conductances, key, *, g_max, t_inference):
        return jnp.maximum(conductances + self.values, 0.0)

"""Test doubles for noise models."""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AbsoluteNoise:
    """Test noise: i.i.d. Gaussian of a fixed ``sigma`` in uS, clamped at 0."""

    sigma: float = 1.0

    def sample(self, conductances, key, *, g_max, t_inference):
        xi = jax.random.normal(key, conductances.shape, conductances.dtype)
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

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

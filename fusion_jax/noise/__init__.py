"""Conductance-space noise models of the Fusion chip (being split into modules)."""

from fusion_jax.noise.chip import *  # noqa: F403
from fusion_jax.noise.chip import (  # noqa: F401
    __all__,
    __doc__,
    _chip_draws,
    _normal_from_code,
    _pcm_draws,
    _readback_moments,
)

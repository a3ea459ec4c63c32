"""fusion_jax: a JAX-native, differentiable simulator of IBM Fusion-chip programming.

The public API is re-exported here; submodules whose names start with an
underscore are internal.
"""

from fusion_jax.conversion import FusionParams, convert_back_to_weights, convert_to_conductances
from fusion_jax.converter import FusionConductanceConverter
from fusion_jax.errors import ArgumentError
from fusion_jax.regression import regression_slope

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "FusionConductanceConverter",
    "FusionParams",
    "convert_back_to_weights",
    "convert_to_conductances",
    "regression_slope",
]

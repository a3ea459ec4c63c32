"""fusion_jax: a JAX-native, differentiable simulator of IBM Fusion-chip programming.

The public API is re-exported here; submodules whose names start with an
underscore are internal.
"""

from fusion_jax import (
    chip_file,
    datasets,
    digits,
    distributed,
    fusion_io,
    layout,
    linen,
    nnx,
    noise,
    plotting,
    tiles,
    training,
    transformer,
    units,
    weights_file,
)
from fusion_jax.conversion import FusionParams, convert_back_to_weights, convert_to_conductances
from fusion_jax.converter import FusionConductanceConverter
from fusion_jax.errors import ArgumentError
from fusion_jax.evaluation import SweepResult, sweep
from fusion_jax.fusion_io import FusionExport, fusion_export, fusion_import
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import is_kernel, leaf_key, program_kernel, program_params
from fusion_jax.plotting import plot_sweep
from fusion_jax.programming import DEFAULT_NOISE, NoiseModel, program
from fusion_jax.regression import regression_slope

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_NOISE",
    "ArgumentError",
    "FusionConductanceConverter",
    "FusionExport",
    "FusionParams",
    "KernelAxes",
    "NoiseModel",
    "SweepResult",
    "convert_back_to_weights",
    "chip_file",
    "convert_to_conductances",
    "datasets",
    "digits",
    "distributed",
    "fusion_export",
    "fusion_import",
    "fusion_io",
    "is_kernel",
    "leaf_key",
    "linen",
    "nnx",
    "noise",
    "plot_sweep",
    "plotting",
    "layout",
    "program",
    "program_kernel",
    "program_params",
    "regression_slope",
    "sweep",
    "tiles",
    "training",
    "transformer",
    "units",
    "weights_file",
]

"""Conductance-space noise models of the Fusion chip.

Two models, both pytrees with the :class:`fusion_jax.NoiseModel` method
``sample(conductances, key, *, g_max, t_inference)``:

* :class:`PCMLikeNoise` (:mod:`fusion_jax.noise.pcm`): the reference's
  statistical PCM model (programming noise, drift, 1/f read noise). Every
  term scales with ``g_max``, so the relative weight noise it gives does not
  depend on ``g_max``.
* :class:`FusionChipNoise` (:mod:`fusion_jax.noise.chip`): a model of what
  the real Fusion chip returns, calibrated on the shipped LeNet5 read-back
  (about 80,000 devices). Its gain, offset, clamp and spread are functions of
  the target in absolute uS, which is what makes ``g_max`` matter.
  :func:`calibrate` (:mod:`fusion_jax.noise.calibration`) fits it to any
  target / read-back pair; :func:`validation_table`
  (:mod:`fusion_jax.noise.validation`) compares a model with a read-back,
  bin by bin.

The formulas both models share (PCM drift and read-noise statistics, the
argument checks) live in ``_common``, the random draws in ``_draws``.

All numeric fields are pytree data fields: a sweep can ``jax.vmap`` over a
batch of models (for example over ``spread_scale`` or ``drift_scale``).
"""

from fusion_jax.noise.calibration import calibrate
from fusion_jax.noise.chip import FusionChipNoise, default_noise
from fusion_jax.noise.pcm import PCMLikeNoise
from fusion_jax.noise.validation import ValidationRow, ValidationTable, validation_table

__all__ = [
    "FusionChipNoise",
    "PCMLikeNoise",
    "ValidationRow",
    "ValidationTable",
    "calibrate",
    "default_noise",
    "validation_table",
]

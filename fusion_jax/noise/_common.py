"""Formulas and checks shared by the noise models and the calibration.

The PCM drift and 1/f read-noise statistics (REFERENCE.md, aihwkit
``PCMLikeNoiseModel``) that both models use, the argument checks of
``sample`` and the checks of a target / read-back pair.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax import _validation

#: Conductance (uS) at which the PCM programming-noise coefficients were fitted.
PCM_PROG_G_REF = 25.0
#: Floor of the relative conductance in the drift statistics (the reference's).
_DRIFT_G_REL_MIN = 1e-7
#: ``max((g/g_max)**0.65, 1e-3)`` equals ``max(g/g_max, _READ_REL_MIN)**0.65``;
#: flooring before the power keeps its derivative finite at 0.
_READ_REL_MIN = 1e-3 ** (1.0 / 0.65)


# --------------------------------------------------------------------------
# Shared PCM statistics (REFERENCE.md, aihwkit PCMLikeNoiseModel)
# --------------------------------------------------------------------------


def _drift_exponent(g_rel: jax.Array, xi: jax.Array, drift_scale: Any) -> jax.Array:
    """Per-device drift exponent ``nu = |mu + sd * xi| * drift_scale``."""
    log_rel = jnp.log(jnp.maximum(jnp.abs(g_rel), _DRIFT_G_REL_MIN))
    mu = jnp.clip(-0.0155 * log_rel + 0.0244, 0.049, 0.1)
    sd = jnp.clip(-0.0125 * log_rel - 0.0059, 0.008, 0.045)
    return jnp.abs(mu + sd * xi) * drift_scale


def _read_noise_sigma(g_rel: jax.Array, t: Any, t_read: Any) -> jax.Array:
    """Relative 1/f read-noise std ``Q * sqrt(ln((t + t_read) / (2 t_read)))``."""
    q = jnp.minimum(0.0088 / jnp.maximum(g_rel, _READ_REL_MIN) ** 0.65, 0.2)
    # The quotient overflows for times beyond about 1e32 s (t_read = 2.5e-7 s):
    # there, the difference of the logs, which is finite.
    ratio = (t + t_read) / (2.0 * t_read)
    log_ratio = jnp.where(
        jnp.isfinite(ratio), jnp.log(ratio), jnp.log(t + t_read) - jnp.log(2.0 * t_read)
    )
    return q * jnp.sqrt(jnp.maximum(log_ratio, 0.0))


def _add_read_noise(
    g: jax.Array, g_rel_prog: jax.Array, xi: jax.Array, scale: Any, t: Any, t_read: Any
) -> jax.Array:
    """``max(0, g + |g| * scale * sigma_read * xi)``."""
    sigma = _read_noise_sigma(g_rel_prog, t, t_read)
    return jnp.maximum(g + jnp.abs(g) * scale * sigma * xi, 0.0)


# --------------------------------------------------------------------------
# Argument checks (concrete values only; traced values pass through)
# --------------------------------------------------------------------------


def _as_conductances(conductances: Any) -> jax.Array:
    """Conductances as a floating JAX array; concrete ones must be finite and >= 0."""
    g = _validation.as_array(conductances, "conductances")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.float32)
    value = _validation.concrete_value(g)
    if value is not None:
        bad = ~np.isfinite(value)
        if bad.any():
            raise ValueError(
                f"conductances contain {int(bad.sum())} NaN or Inf values "
                f"(first at flat index {int(np.flatnonzero(bad)[0])}, shape {value.shape})."
            )
        if (value < 0).any():
            raise ValueError(
                f"conductances must be >= 0 uS (magnitudes); {int((value < 0).sum())} are "
                f"negative, the smallest {float(value.min()):.4g} (shape {value.shape})."
            )
    return g


def _check_time(t_inference: Any, name: str = "t_inference") -> None:
    _validation.check_t_inference(t_inference, name)


def _check_sample_args(model: Any, key: Any, g_max: Any, t_inference: Any) -> None:
    """The settings checks of ``sample`` (the fields are checked when the model is built)."""
    where = f"{type(model).__name__}.sample"
    _validation.check_key(key, where)
    _validation.check_g_max(g_max, where=where)
    _validation.check_t_inference(t_inference, where=where)


def _compute_dtype(dtype: Any) -> Any:
    """At least float32: float16's range (max 65504, smallest normal 6e-5) is too small
    for the intermediate terms (``t_read`` = 2.5e-7 s alone would flush to 0)."""
    return jnp.promote_types(dtype, jnp.float32)


def _as_float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _prepare_pair(
    targets: Any, programmed: Any, min_points: int, need: str
) -> tuple[np.ndarray, ...]:
    """Validated flat float64 copies of a target / read-back pair."""
    arrays = []
    for name, x in (("targets", targets), ("programmed", programmed)):
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
        arrays.append(x)
    t, p = arrays
    if t.shape != p.shape:
        raise ValueError(
            f"targets and programmed must have the same shape (one read-back per target), "
            f"got {t.shape} and {p.shape}."
        )
    for name, x in (("targets", t), ("programmed", p)):
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(
                f"{name} contain {int(bad.sum())} NaN or Inf values "
                f"(first at flat index {int(np.flatnonzero(bad.ravel())[0])})."
            )
        if (x < 0).any():
            raise ValueError(
                f"{name} must be conductances >= 0 uS; {int((x < 0).sum())} are negative "
                f"(smallest {float(x.min()):.4g})."
            )
    if t.size < min_points:
        raise ValueError(
            f"{need} needs at least {min_points} target / read-back pairs, got {t.size}."
        )
    return t.astype(np.float64).ravel(), p.astype(np.float64).ravel()


def _check_targets_in_range(t: np.ndarray, g_max: float, shape: tuple[int, ...]) -> None:
    """Refuse targets above ``g_max``: the chip cannot hold them, a fit would chase them."""
    above = np.flatnonzero(t > g_max)
    if above.size == 0:
        return
    where = [tuple(int(i) for i in np.unravel_index(k, shape)) for k in above[:8]]
    shown = [w[0] if len(w) == 1 else w for w in where]
    more = f" and {above.size - 8} more" if above.size > 8 else ""
    raise ValueError(
        f"targets must lie in [0, g_max = {g_max:g}] uS, the chip's range; {above.size} of "
        f"{t.size} exceed it (largest {float(t[above].max()):.6g}) at positions {shown}{more}."
    )

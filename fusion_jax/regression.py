"""Batched per-row least-squares slope: the import side of the Fusion converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation

__all__ = ["regression_slope"]


def _safe_scale(scale: jax.Array) -> jax.Array:
    """Per-row normalisation: the power of two nearest above ``scale``.

    Dividing by a power of two is exact, so normalising adds no rounding;
    zero or non-finite scales become 1. The slope does not depend on the
    scale, so it carries no gradient.
    """
    scale = jax.lax.stop_gradient(scale)
    ok = (scale > 0) & jnp.isfinite(scale)
    _, exponent = jnp.frexp(jnp.where(ok, scale, jnp.ones_like(scale)))
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(scale), exponent), jnp.ones_like(scale))


def _slope(
    x: jax.Array,
    y: jax.Array,
    *,
    strict_aihwkit: bool,
    x_scale: jax.Array | None = None,
    y_scale: jax.Array | None = None,
    zero_default: jax.Array | None = None,
) -> jax.Array:
    """Per-row OLS slope of ``y`` on ``x`` over the last axis (private core).

    ``x_scale`` / ``y_scale`` are per-row magnitudes ``[..., out]`` used only to
    normalise the data before the sums (the slope is invariant to them, so a
    caller that already knows them saves a pass; they get no gradient).
    ``zero_default`` is the slope returned, in the through-origin fallback,
    for rows whose ``x`` is all zero (default 0); its value never changes
    ``slope * x`` there, only the derivative.
    """
    if x_scale is None:
        x_scale = jnp.max(jnp.abs(x), axis=-1)
    if y_scale is None:
        y_scale = jnp.max(jnp.abs(y), axis=-1)
    sx = _safe_scale(x_scale)
    sy = _safe_scale(y_scale)
    xn = x / sx[..., None]
    yn = y / sy[..., None]

    # Centred (two-pass) sums: no cancellation for rows with a large mean.
    xc = xn - jnp.mean(xn, axis=-1, keepdims=True)
    yc = yn - jnp.mean(yn, axis=-1, keepdims=True)
    sxy = jnp.sum(xc * yc, axis=-1)
    sxx = jnp.sum(xc * xc, axis=-1)
    # Zero variance, tested exactly: the mean of equal values can be off by
    # an ulp, so ``sxx`` of a constant row is not always exactly 0.
    degenerate = jnp.max(x, axis=-1) == jnp.min(x, axis=-1)
    slope = sxy / jnp.where(degenerate, jnp.ones_like(sxx), sxx)

    if strict_aihwkit:
        # scikit-learn's minimum-norm solution: the whole row becomes 0.
        slope = jnp.where(degenerate, jnp.zeros_like(slope), slope)
    else:
        oxy = jnp.sum(xn * yn, axis=-1)
        oxx = jnp.sum(xn * xn, axis=-1)
        empty = oxx == 0
        origin = oxy / jnp.where(empty, jnp.ones_like(oxx), oxx)
        if zero_default is None:
            default = jnp.zeros_like(origin)
        else:
            default = jnp.broadcast_to(zero_default * sx / sy, origin.shape).astype(origin.dtype)
        origin = jnp.where(empty, default, origin)
        slope = jnp.where(degenerate, origin, slope)
    return slope * (sy / sx)


def regression_slope(
    x: Float[ArrayLike, "*batch out in"],
    y: Float[ArrayLike, "*batch out in"],
    *,
    strict_aihwkit: bool = False,
) -> Float[Array, "*batch out"]:
    """Least-squares slope of ``y`` on ``x`` for every row at once.

    For each row (last axis), fits ``y = a * x + b`` by ordinary least squares
    with the intercept ``b`` fitted, and returns ``a``: the closed form of
    scikit-learn's ``LinearRegression().fit(x_row[:, None], y_row).coef_``,
    ``a = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``. Rows are first
    normalised by their largest magnitude and the sums are centred, so rows
    with a large common offset, tiny (1e-30) or huge (1e30) values lose no
    precision to cancellation, underflow or overflow.

    A row whose ``x`` has zero variance (constant, or a single element) has no
    unique slope. scikit-learn returns 0 there (``strict_aihwkit=True``); by
    default this function returns the least-squares slope through the origin,
    ``sum(x * y) / sum(x * x)`` (0 when ``x`` is all zero), which is exact for
    noise-free conductances.

    Args:
        x: Regressors, shape ``[..., out, in]``.
        y: Targets, same shape as ``x``.
        strict_aihwkit: Reproduce the reference's zero slope on zero-variance
            rows instead of the through-origin fallback.

    Returns:
        The slope of every row, shape ``[..., out]``, in the computation dtype
        (float32, or float64 for float64 inputs with x64 enabled).

    References:
        aihwkit ``FusionConductanceConverter.convert_back_to_weights``;
        ``../shared/REFERENCE.md`` (degenerate rows).

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> x = jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
        >>> y = jnp.array([[2.0, 4.0, 6.5], [1.0, 1.0, 1.0]])
        >>> fj.regression_slope(x, y)
        Array([2.25, 0.2 ], dtype=float32)
        >>> fj.regression_slope(x, y, strict_aihwkit=True)
        Array([2.25, 0.  ], dtype=float32)
    """
    x = _validation.as_matrix_stack(x, "x")
    y = _validation.as_matrix_stack(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}.")
    dtype = _validation.compute_dtype(jnp.result_type(x.dtype, y.dtype))
    return _slope(x.astype(dtype), y.astype(dtype), strict_aihwkit=strict_aihwkit)

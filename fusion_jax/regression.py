"""Batched per-row least-squares slope: the import side of the Fusion converter."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation
from fusion_jax._fusion import materialize

__all__ = ["regression_slope"]


#: Rows are cut into this many contiguous blocks, reduced across blocks
#: position by position: the partial results are independent, so the single
#: pass over the data vectorises instead of waiting on one accumulator per
#: row, and each accumulator adds only ``n / 16`` values (sums of long rows
#: stay accurate).
_ROW_BLOCKS = 16
#: How many leading elements of a row give its shift (see :func:`_row_shift`).
_SHIFT_SAMPLE = 32


def _safe_scale(scale: jax.Array) -> jax.Array:
    """Per-row normalisation: the power of two nearest above ``scale``.

    Dividing by a power of two is exact, so normalising adds no rounding;
    zero or non-finite scales become 1. The slope does not depend on the
    scale, so it carries no gradient.
    """
    scale = jax.lax.stop_gradient(scale)
    ok = (scale > 0) & jnp.isfinite(scale)
    _, exponent = jnp.frexp(jnp.where(ok, scale, jnp.ones_like(scale)))
    # Kept within [2**minexp, 2**(maxexp - 2)], so that both the scale and its
    # reciprocal are normal numbers (neither Inf nor flushed to 0); values
    # normalised by it stay below 4 in magnitude.
    info = jnp.finfo(scale.dtype)
    exponent = jnp.clip(exponent, int(info.minexp), int(info.maxexp) - 2)
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(scale), exponent), jnp.ones_like(scale))


Terms = tuple[jax.Array, ...]


class SlopeLinearization(NamedTuple):
    """Per-line values that give the derivative of a fitted slope in closed form.

    For a line with slope ``a``, ``da = inv_den * sum_j(((y_j - y_center) -
    2 a (x_j - x_center)) dx_j + (x_j - x_center) dy_j)``: the derivative of
    ``sum((x - x_mean)(y - y_mean)) / sum((x - x_mean)^2)`` for a centred
    line, of ``sum(x y) / sum(x x)`` (centres 0) for a line fitted through
    the origin, and 0 (``inv_den = 0``) for a line whose slope is a constant
    (zeroed by ``strict_aihwkit``, or a line of zeros).
    """

    x_center: jax.Array
    y_center: jax.Array
    inv_den: jax.Array


def _add(a: Terms, b: Terms) -> Terms:
    return tuple(p + q for p, q in zip(a, b, strict=True))


def _reduce_rows(
    terms: Terms,
    combine: Callable[[Terms, Terms], Terms],
    init: float,
    finish: Callable,
    axis: int = 1,
) -> Terms:
    """Reduce several 2-D arrays along ``axis`` in one pass over the data.

    ``axis=1``: rows ``[lines, n]`` (the reference layout); ``axis=0``:
    columns ``[n, lines]`` (a Flax kernel); 3-D ``axis=1``: a stack of
    column matrices ``[stack, n, lines]``. One variadic ``lax.reduce``: XLA
    computes the terms elementwise from the inputs inside the reduction
    instead of writing each to memory. The first ``n - n % 16`` elements of
    a line are cut into 16 contiguous blocks, reduced to independent,
    vectorisable partial results that ``finish`` then reduces; the last
    ``n % 16`` elements, if any, are reduced on their own and
    ``combine``-d in.
    """
    n = terms[0].shape[axis]
    inits = tuple(jnp.asarray(init, t.dtype) for t in terms)
    if n < 2 * _ROW_BLOCKS:
        return tuple(lax.reduce(terms, inits, combine, (axis,)))
    main = n - n % _ROW_BLOCKS
    if axis == 1 and terms[0].ndim == 2:  # [lines, 16, n/16]: across blocks, position by position
        split = tuple(t[:, :main].reshape(t.shape[0], _ROW_BLOCKS, -1) for t in terms)
        partial = lax.reduce(split, inits, combine, (1,))
        result = tuple(finish(p, axis=-1) for p in partial)
        rest = tuple(t[:, main:] for t in terms)
    else:  # [(stack,) 16, n/16, lines]: within blocks, vectorised over the lines
        split = tuple(
            t[..., :main, :].reshape(*t.shape[:-2], _ROW_BLOCKS, -1, t.shape[-1]) for t in terms
        )
        partial = lax.reduce(split, inits, combine, (split[0].ndim - 2,))
        result = tuple(finish(p, axis=-2) for p in partial)
        rest = tuple(t[..., main:, :] for t in terms)
    if main < n:
        result = combine(result, tuple(lax.reduce(rest, inits, combine, (axis,))))
    return result


def _row_shift(v: jax.Array, axis: int = 1) -> jax.Array:
    """A value near each line's mean, from a sample of the line (2-D ``v``, lines along ``axis``).

    Returns ``[lines, 1]`` for ``axis=1``, ``[1, lines]`` for ``axis=0``.

    The mean of the row's first ``_SHIFT_SAMPLE`` elements (all of a shorter
    row), or exactly their value when those are all equal, so that a
    constant row shifts to exact zeros. For rows whose leading elements look
    like the rest (weights, conductances), the shift lies within a few
    standard deviations of the mean, so sums of shifted values lose no
    precision to a large common offset and the moments need only one pass;
    a row whose first 32 elements are unlike the rest loses some (the shift
    is always within the range of the row). The sample is contiguous: cheap
    to read even for many short rows.
    """
    count = min(_SHIFT_SAMPLE, v.shape[axis])
    sample = lax.slice_in_dim(v, 0, count, axis=axis)
    # Sum, minimum and maximum in one reduction: the sample is read once, in
    # the reduction itself, instead of being written to memory for several.
    inits = tuple(jnp.asarray(i, v.dtype) for i in (0.0, jnp.inf, -jnp.inf))
    total, low, high = lax.reduce(
        (sample, sample, sample),
        inits,
        lambda a, b: (a[0] + b[0], jnp.minimum(a[1], b[1]), jnp.maximum(a[2], b[2])),
        (axis % v.ndim,),
    )
    shift = jnp.where(low == high, low, total / count)
    return jnp.expand_dims(shift, axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _shifted_moments(
    x: jax.Array, y: jax.Array, kx: jax.Array, ky: jax.Array, axis: int = 1
) -> Terms:
    """Per-line ``(sum dx, sum dy, sum dx^2, sum dx dy, sum dy^2)`` along ``axis``.

    Here ``dx = x - kx`` and ``dy = y - ky``, in one pass over ``x`` and ``y``
    (2-D; shifts broadcast along ``axis``). The derivative rule uses plain
    sums, which reverse mode can transpose.
    """
    dx = x - kx
    dy = y - ky
    return _reduce_rows((dx, dy, dx * dx, dx * dy, dy * dy), _add, 0.0, jnp.sum, axis)


@_shifted_moments.defjvp
def _shifted_moments_jvp(axis: int, primals: Terms, tangents: Terms) -> tuple[Terms, Terms]:
    x, y, kx, ky = primals
    tx, ty, tkx, tky = tangents
    dx, dy = x - kx, y - ky
    tdx, tdy = tx - tkx, ty - tky
    tangent = (
        jnp.sum(tdx, axis=axis),
        jnp.sum(tdy, axis=axis),
        2 * jnp.sum(dx * tdx, axis=axis),
        jnp.sum(tdx * dy + dx * tdy, axis=axis),
        2 * jnp.sum(dy * tdy, axis=axis),
    )
    return _shifted_moments(x, y, kx, ky, axis), tangent


def _normalised_moments(
    x: jax.Array, y: jax.Array, sx: jax.Array, sy: jax.Array, axis: int = 1
) -> tuple[Terms, jax.Array, jax.Array]:
    """Moments of ``x / sx`` and ``y / sy`` (per-line powers of two) and their shifts."""
    # Multiplying by the reciprocal of a power of two is exact, and cheaper
    # than a division per element. The per-line values are materialised:
    # otherwise XLA recomputes their steps (frexp, selects) for every element.
    inv_sx, inv_sy = materialize(lax.stop_gradient((1.0 / sx, 1.0 / sy)))
    xn = x * jnp.expand_dims(inv_sx, axis)
    yn = y * jnp.expand_dims(inv_sy, axis)
    # Shifts carry no gradient: every result is exactly invariant to them.
    kx, ky = materialize(lax.stop_gradient((_row_shift(xn, axis), _row_shift(yn, axis))))
    return _shifted_moments(xn, yn, kx, ky, axis), kx, ky


def _safe_range(dtype: Any) -> tuple[float, float]:
    """Magnitudes ``(lo, hi)`` of row values whose moments need no normalisation.

    A row's sum of squares ``q`` is in range when ``n lo^2 <= q <= hi^2``:
    then no value exceeds ``hi = 2**(maxexp / 3)``, so no sum of squares or
    products can overflow, and the row's typical magnitude is at least
    ``lo = 2**(minexp / 6)``, so the differences between its distinct values
    have normal squares and nothing is lost to underflow or flushed
    subnormals. For float32 that is ``2**-21`` to ``2**42``.
    """
    info = jnp.finfo(dtype)
    return 2.0 ** (int(info.minexp) // 6), 2.0 ** (int(info.maxexp) // 3)


def _origin_sums(moments: Terms, kx: jax.Array, ky: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """``(sum x y, sum x x, sum y y)`` per row, exactly rewritten from the shifted moments."""
    s_dx, s_dy, s_dxx, s_dxy, s_dyy = moments
    oxy = s_dxy + kx * s_dy + ky * s_dx + n * kx * ky
    oxx = s_dxx + 2 * kx * s_dx + n * kx * kx
    oyy = s_dyy + 2 * ky * s_dy + n * ky * ky
    return oxy, oxx, oyy


def _moments_any_scale(
    x: jax.Array, y: jax.Array, axis: int = 1
) -> tuple[Terms, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Moments and shifts of rows whose magnitudes are unknown, usually in one pass.

    The moments of the raw data are used where every row's sums of squares
    are in :func:`_safe_range`: scaling by a power of two is exact, so
    normalised data would give the same sums. Otherwise (rows of 1e-30 or
    1e30, and rows that are all zero, whose sum of squares cannot tell them
    from an underflow) two more passes take the row maxima and recompute the
    moments on data normalised by powers of two near them, for the whole
    matrix. Under ``jax.vmap`` the ``lax.cond`` becomes a select and all
    three passes run. Returns ``(moments, kx, ky, sx, sy)``.
    """
    n = x.shape[axis]
    kx = lax.stop_gradient(_row_shift(x, axis))
    ky = lax.stop_gradient(_row_shift(y, axis))
    moments = _shifted_moments(x, y, kx, ky, axis)
    _, oxx, oyy = lax.stop_gradient(
        _origin_sums(moments, jnp.squeeze(kx, axis), jnp.squeeze(ky, axis), n)
    )
    lo, hi = _safe_range(x.dtype)

    def in_range(q: jax.Array) -> jax.Array:
        # An all-zero row is out of range too: a sum of squares of 0 may be
        # the underflow of a row of 1e-30s.
        return (q >= n * lo * lo) & (q <= hi * hi)

    # (A NaN or Inf fails the bounds already; the explicit test is a safety net.)
    ok = jnp.all(in_range(oxx) & in_range(oyy) & jnp.isfinite(jnp.stack(moments)).all(axis=0))

    def normalised() -> tuple[Terms, jax.Array, jax.Array, jax.Array, jax.Array]:
        max_x = jnp.max(jnp.abs(lax.stop_gradient(x)), axis=axis)
        max_y = jnp.max(jnp.abs(lax.stop_gradient(y)), axis=axis)
        sx, sy = _safe_scale(max_x), _safe_scale(max_y)
        return (*_normalised_moments(x, y, sx, sy, axis), sx, sy)

    one = jnp.ones_like(oxx)
    return lax.cond(ok, lambda: (tuple(moments), kx, ky, one, one), normalised)


def _slope(
    x: jax.Array,
    y: jax.Array,
    *,
    strict_aihwkit: bool,
    x_scale: jax.Array | None = None,
    y_scale: jax.Array | None = None,
    zero_default: jax.Array | None = None,
    axis: int = -1,
    linearize: bool = False,
) -> jax.Array | tuple[jax.Array, SlopeLinearization]:
    """Per-line OLS slope of ``y`` on ``x`` (private core).

    ``axis=-1``: lines are rows ``[..., out, in]`` (the reference layout);
    ``axis=-2``: lines are the columns of matrices ``[..., in, out]`` (Flax
    kernels, programmed in their own layout; leading axes are independent
    matrices). Returns one slope per line, ``[..., out]``.

    ``x_scale`` / ``y_scale`` are per-line magnitudes used only to normalise
    the data before the sums (the slope is invariant to them; they get no
    gradient). Give both or neither. ``zero_default`` is the slope returned,
    in the through-origin fallback, for lines whose ``x`` is all zero
    (default 0); its value never changes ``slope * x`` there, only the
    derivative.

    ``linearize=True`` returns ``(slope, SlopeLinearization)``: per-line
    values that give the slope's derivative in closed form (see
    :class:`SlopeLinearization`), from the same sums.

    Passes over the data: one for the moments (with known scales, or when no
    line is of extreme magnitude or all zero; otherwise two more, see
    :func:`_moments_any_scale`). Lines are shifted by a value near their mean
    (:func:`_row_shift`) and the centred sums recovered as
    ``sum(dx dy) - sum(dx) sum(dy) / n``: no cancellation for lines with a
    large common offset, without a separate pass for the means.
    """
    if axis == -1:
        batch, n = x.shape[:-1], x.shape[-1]
        # One matrix of rows: every reduction below is over its last axis.
        x = x.reshape(-1, n)
        y = y.reshape(-1, n)
        red = 1
    elif axis == -2 and x.ndim == 2:
        batch, n = x.shape[1:], x.shape[0]
        red = 0
    elif axis == -2:
        # A stack of column matrices [*lead, n, out] (stacked layers, input
        # tiles) as one [stack, n, out] array: every reduction below is over
        # its axis 1, vectorised over the stack and the columns.
        batch, n = (*x.shape[:-2], x.shape[-1]), x.shape[-2]
        x = x.reshape(-1, n, x.shape[-1])
        y = y.reshape(-1, n, y.shape[-1])
        red = 1
    else:
        raise ValueError(f"lines along axis {axis} of shape {x.shape} are not supported")

    # Per-line values: [lines] for rows or one column matrix, [stack, out] for a stack.
    line_shape = (x.shape[0], x.shape[2]) if x.ndim == 3 else (-1,)

    def rows(v: jax.Array) -> jax.Array:  # per-line values, shaped like the lines
        return jnp.broadcast_to(v, batch).reshape(line_shape)

    if x_scale is None or y_scale is None:
        moments, kx, ky, sx, sy = _moments_any_scale(x, y, red)
    else:
        sx, sy = _safe_scale(rows(x_scale)), _safe_scale(rows(y_scale))
        moments, kx, ky = _normalised_moments(x, y, sx, sy, red)
    s_dx, s_dy, s_dxx, s_dxy, s_dyy = moments
    sxx = s_dxx - s_dx * s_dx / n
    sxy = s_dxy - s_dx * s_dy / n
    # Zero variance, tested exactly: a constant line is shifted by its own
    # value, so all its dx are exactly 0 (and on data normalised to
    # magnitudes near 1, dx^2 of two distinct values does not underflow).
    degenerate = s_dxx == 0
    one = jnp.ones_like(sxx)

    kx, ky = jnp.squeeze(kx, red), jnp.squeeze(ky, red)
    if strict_aihwkit:
        # scikit-learn's minimum-norm solution: the whole line becomes 0.
        num = jnp.where(degenerate, jnp.zeros_like(sxy), sxy)
        den = jnp.where(degenerate, one, sxx)
        # Centred lines; a zeroed line's slope is the constant 0.
        origin, fixed = jnp.zeros_like(degenerate), degenerate
    else:
        oxy, oxx, _ = _origin_sums(moments, kx, ky, n)
        empty = oxx == 0
        if zero_default is None:
            default = jnp.zeros_like(oxy)
        else:
            default = (rows(zero_default) * sx / sy).astype(oxy.dtype)
        # Constant original weights are degenerate too: with an intercept, the
        # fit gives them slope 0 whatever the conductances (the reference
        # zeroes such rows after noisy programming). Both get the slope
        # through the origin.
        origin = degenerate | (s_dyy == 0)
        num = jnp.where(origin, jnp.where(empty, default, oxy), sxy)
        den = jnp.where(origin, jnp.where(empty, one, oxx), sxx)
        # A line of zeros keeps its default: ``slope * x`` does not depend on it.
        fixed = origin & empty
    slope = ((num / den) * (sy / sx)).reshape(batch)
    if not linearize:
        return slope
    # Centres and the denominator in the data's own units (``sx`` is a power
    # of two: exact); centred lines use the means, through-origin lines 0.
    x_mean = (kx + s_dx / n) * sx
    y_mean = (ky + s_dy / n) * sy
    zero = jnp.zeros_like(x_mean)
    inv_den = jnp.where(fixed, zero, 1.0 / (jnp.where(fixed, one, den) * sx * sx))
    lin = SlopeLinearization(
        x_center=jnp.where(origin, zero, x_mean).reshape(batch),
        y_center=jnp.where(origin, zero, y_mean).reshape(batch),
        inv_den=inv_den.reshape(batch),
    )
    return slope, lin


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
    ``a = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``. Rows are
    shifted by a value near their mean before the sums, so rows with a large
    common offset lose no precision to cancellation. One jitted pass over the
    data computes all the sums. Only if some row's sum of squares of ``x`` or
    ``y`` is outside a safe range (float32: a typical magnitude below about
    5e-7, or values above about ``4e12 / sqrt(n)``), or is 0 (a row of
    zeros, which an underflow would look like), two more passes take the
    row maxima and repeat the sums on rows normalised by a power of two near
    them, so 1e-30 or 1e30 lose no precision to underflow or overflow either.

    Degenerate rows: where ``x`` has zero variance (constant, or a single
    element) there is no unique slope and scikit-learn returns 0; where ``y``
    is constant the fitted intercept absorbs it and the slope is 0 too. In
    the Fusion import both zero the row's weights. ``strict_aihwkit=True``
    returns those zeros; by default these rows get the least-squares slope
    through the origin, ``sum(x * y) / sum(x * x)`` (0 when ``x`` is all
    zero), which is exact for noise-free conductances. Every other row gets
    scikit-learn's slope in both modes.

    Args:
        x: Regressors, shape ``[..., out, in]``.
        y: Targets, same shape as ``x``.
        strict_aihwkit: Reproduce the reference's zero slope on degenerate
            rows instead of the through-origin fallback.

    Returns:
        The slope of every row, shape ``[..., out]``, in the computation dtype
        (float32, or float64 for float64 inputs with x64 enabled).

    Raises:
        ValueError: if the shapes differ or are not ``[..., out, in]`` with
            ``in >= 1``, or ``x`` or ``y`` hold NaN/Inf (how many, in which
            rows; traced inputs are checked under ``checkify``).
        TypeError: for non-numeric inputs.

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
    _validation.check_finite(x, "x")
    _validation.check_finite(y, "y")
    dtype = _validation.compute_dtype(jnp.result_type(x.dtype, y.dtype))
    return _slope_jit(x.astype(dtype), y.astype(dtype), strict_aihwkit=bool(strict_aihwkit))


_slope_jit = jax.jit(_slope, static_argnames=("strict_aihwkit",), inline=True)
